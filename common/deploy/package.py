"""Self-contained bundle archives: the bundle plus a copy of the `common` code it imports.

The archive unpacks to one folder, the bundle root, with ``common/`` inside it, just as model-zoo
bundles carry their own ``scripts/`` package::

    <bundle>/configs/...  <bundle>/docs/...  <bundle>/models/...  <bundle>/common/...

A user with MONAI and the archive runs, from inside the unpacked folder,
``python -m monai.bundle run --config_file configs/inference.yaml --bundle_root . --dataset_dir DATA``.
Only the `common` modules the bundle reaches are copied: those its configs name, and everything they
import in turn (found by reading the code, not by running it).
"""

from __future__ import annotations

import ast
import os
import re
import stat
import zipfile
from pathlib import Path, PurePosixPath

from common.io.atomic import atomic_path

COMMON_ROOT = Path(__file__).resolve().parents[1]
# bundle content that is produced by running it, never shipped
EXCLUDED_DIRS = {"__pycache__", "eval", "logs", "runs", ".ipynb_checkpoints"}
_CONFIG_REF = re.compile(r"\bcommon(?:\.[A-Za-z_]\w*)+")


def _module_file(module: str) -> Path | None:
    """The source file of a `common` module (package __init__ or module file), or None."""
    parts = module.split(".")[1:]
    base = COMMON_ROOT.joinpath(*parts)
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


def _resolve(name: str) -> str | None:
    """The longest prefix of a dotted name that is a `common` module (attributes dropped)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if _module_file(candidate) is not None:
            return candidate
    return None


def _imports_of(path: Path, module: str) -> set[str]:
    """`common` modules imported by one source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(_CONFIG_REF.findall(node.value))  # importlib-by-name tables
    return {m for m in (_resolve(n) for n in found if n.split(".")[0] == "common") if m}


def common_modules_used(bundle: str | Path) -> set[str]:
    """Every `common` module a bundle's configs reach, directly or through imports."""
    todo: set[str] = set()
    for config in Path(bundle, "configs").glob("*"):
        if config.suffix in {".yaml", ".yml", ".json", ".conf"}:
            todo.update(m for m in (_resolve(n) for n in _CONFIG_REF.findall(config.read_text())) if m)
    todo.add("common")
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        # a module's parent packages run their __init__ on import too
        parts = module.split(".")
        todo.update(".".join(parts[:i]) for i in range(1, len(parts)))
        todo |= _imports_of(_module_file(module), module) - seen
    return seen


def package_bundle(bundle: str | Path, out: str | Path | None = None) -> Path:
    """Write ``<bundle name>.zip`` holding the bundle and the `common` code it imports.

    Args:
        bundle: the bundle folder.
        out: the zip to write (default: ``dist/<bundle name>.zip``).

    Returns:
        the archive path.
    """
    bundle = Path(bundle).resolve()
    name = bundle.name
    out = Path(out) if out else Path("dist") / f"{name}.zip"
    files: list[tuple[Path, str]] = []
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle)
        if path.is_symlink() or not path.is_file() or EXCLUDED_DIRS & set(rel.parts) or rel.parts[0] == "common":
            continue
        files.append((path, f"{name}/{rel.as_posix()}"))
    for module in sorted(common_modules_used(bundle)):
        source = _module_file(module)
        files.append((source, f"{name}/{source.relative_to(COMMON_ROOT.parent).as_posix()}"))
        for data in source.parent.glob("*"):  # data files beside a package (schemas, templates, configs)
            if source.name == "__init__.py" and data.suffix in {".json", ".yaml", ".conf", ".txt"}:
                files.append((data, f"{name}/{data.relative_to(COMMON_ROOT.parent).as_posix()}"))
        for sub in ("schemas", "resources", "configs"):
            folder = source.parent / sub
            if source.name == "__init__.py" and folder.is_dir() and not (folder / "__init__.py").exists():
                for data in folder.rglob("*"):
                    if data.is_file() and "__pycache__" not in data.parts:
                        files.append((data, f"{name}/{data.relative_to(COMMON_ROOT.parent).as_posix()}"))
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for source, arcname in dict((arc, (src, arc)) for src, arc in files).values():
                info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))  # reproducible archives
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, source.read_bytes())
    return out


def safe_extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a zip into ``target``, refusing any member that would land outside it.

    Absolute names, ``..`` components, drive letters and symbolic links are rejected before anything
    is written.

    Args:
        archive: the zip file.
        target: the folder to extract into (created).

    Returns:
        the target folder.

    Raises:
        ValueError: a member would escape ``target`` or is a link.
    """
    target = Path(target).resolve()
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            name = info.filename
            pure = PurePosixPath(name.replace("\\", "/"))
            mode = info.external_attr >> 16
            if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name):
                raise ValueError(f"{archive}: member {name!r} would be written outside {target}")
            if stat.S_ISLNK(mode):
                raise ValueError(f"{archive}: member {name!r} is a symbolic link")
            if not str((target / pure).resolve()).startswith(str(target) + os.sep):
                raise ValueError(f"{archive}: member {name!r} would be written outside {target}")
        target.mkdir(parents=True, exist_ok=True)
        zf.extractall(target, members)
    return target
