"""Self-contained bundle archives: the bundle plus a copy of the `common` code it imports.

The archive unpacks to one folder, the bundle root, with ``common/`` inside it, just as model-zoo
bundles carry their own ``scripts/`` package::

    <bundle>/configs/...  <bundle>/docs/...  <bundle>/models/...  <bundle>/common/...

    <bundle>/__main__.py  <bundle>/requirements.txt

A user installs ``requirements.txt`` (the versions the bundle was tested with) and runs, from any folder,
``python path/to/<bundle> run --config_file configs/inference.yaml --dataset_dir DATA --output_dir OUT``: the
archive's ``__main__.py`` puts the bundle first on the path, so its own `common` is the one imported, and
starts ``monai.bundle``. (``python -m monai.bundle run ...`` works from inside the folder, or from anywhere
with ``PYTHONPATH=<bundle>``; a run that would import another `common` is refused, see
``common.bundle_utils.check_vendored_common``.) Only the `common` modules the bundle reaches are copied: those
its configs name, and everything they import in turn (found by reading the code, not by running it).
"""

from __future__ import annotations

import ast
import os
import re
import stat
import sys
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

from common.io.atomic import atomic_path
from zoo_tools import REPO

COMMON_ROOT = REPO / "common"
# bundle content that is produced by running it, never shipped
EXCLUDED_DIRS = {"__pycache__", "eval", "logs", "runs", ".ipynb_checkpoints"}
_CONFIG_REF = re.compile(r"\bcommon(?:\.[A-Za-z_]\w*)+")
_CONFIG_IMPORT = re.compile(r"""^\s*-?\s*["']?\$(?:import|from)\s+([A-Za-z_]\w*)""", re.MULTILINE)
ARCHIVE_MAIN = Path(__file__).parent / "resources" / "archive_main.py"
# what every bundle runs on, whatever its code imports (metadata.json gives them their own fields)
CORE_PACKAGES = ("torch", "monai", "numpy")


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


def _imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name one source file imports (relative imports made absolute), lazy imports included, and
    the `common` module names its strings hold (importlib-by-name tables)."""
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
            found.update(_CONFIG_REF.findall(node.value))
    return found


def _imports_of(path: Path, module: str) -> set[str]:
    """`common` modules imported by one source file."""
    return {m for m in (_resolve(n) for n in _imported_names(path, module) if n.split(".")[0] == "common") if m}


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


def third_party_imports(bundle: str | Path) -> set[str]:
    """Top-level names of the non-standard-library packages a bundle's code imports.

    Read from the `common` modules it reaches (:func:`common_modules_used`) and the ``$import`` lines of its
    configs, lazy imports inside functions included.
    """
    names = {name.split(".")[0] for module in common_modules_used(bundle)
             for name in _imported_names(_module_file(module), module)}
    for config in Path(bundle, "configs").glob("*.yaml"):
        names.update(_CONFIG_IMPORT.findall(config.read_text(encoding="utf-8")))
    return {n for n in names if n and n not in sys.stdlib_module_names and n not in ("common", "__future__")}


def tested_requirements(bundle: str | Path) -> dict[str, str]:
    """The distributions a bundle needs and their versions in this environment (the one its tests ran in).

    Returns:
        ``{distribution: version}`` (lower-case names, sorted) for the core packages, every distribution of
        :func:`third_party_imports` and those ``metadata.json`` requires beyond them (e.g. tensorboard, which
        configs reach through MONAI's handlers rather than an import).

    Raises:
        ModuleNotFoundError: an imported package is not installed here (so its version is unknown).
    """
    import json

    providers = metadata.packages_distributions()
    meta = json.loads(Path(bundle, "configs", "metadata.json").read_text(encoding="utf-8"))
    dists = set(CORE_PACKAGES) | set(meta.get("required_packages_version") or {})
    for name in third_party_imports(bundle):
        if name not in providers:
            raise ModuleNotFoundError(f"{bundle}: its code imports {name!r}, which no installed distribution provides")
        dists.add(providers[name][0])
    # a local build tag (torch's "+cpu") names a wheel index, not a version to require
    return {d.lower(): metadata.version(d).split("+")[0] for d in sorted(dists, key=str.lower)}


def requirements_text(bundle: str | Path) -> str:
    """``requirements.txt`` of an archive: :func:`tested_requirements` pinned exactly."""
    lines = [f"# the versions {Path(bundle).name} was tested with; pip install -r requirements.txt",
             "# (torch: pick the wheel for your CUDA or CPU at https://pytorch.org if pip's default does not fit)"]
    lines += [f"{d}=={v}" for d, v in tested_requirements(bundle).items()]
    return "\n".join(lines) + "\n"


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
    members = {arc: src.read_bytes() for src, arc in files}
    members[f"{name}/__main__.py"] = ARCHIVE_MAIN.read_bytes()
    members[f"{name}/requirements.txt"] = requirements_text(bundle).encode()
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arcname, payload in members.items():
                info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))  # reproducible archives
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, payload)
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
