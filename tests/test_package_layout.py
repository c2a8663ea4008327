"""`common` is what the bundles run, `zoo_tools` what works on them: the line between the two holds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_common_never_reaches_into_bundles_or_tooling():
    problems = []
    for path in sorted((REPO / "common").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                problems += [f"{path}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] == "zoo_tools"]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                # a path into the repository's bundles (a user's bundle comes in as @bundle_root)
                if re.search(r"(^|[/\\])bundles([/\\]|$)", node.value) or node.value == "bundles":
                    problems.append(f"{path}:{node.lineno}: {node.value!r}")
    assert problems == [], "\n".join(problems)


def test_no_bundle_config_names_the_tooling():
    hits = [str(p) for p in (REPO / "bundles").glob("*/configs/*") if "zoo_tools" in p.read_text(errors="ignore")]
    assert hits == []
