"""Run this unpacked bundle from any folder, with the `common` package it carries:

    python path/to/<bundle> run --config_file configs/inference.yaml --dataset_dir DATA --output_dir OUT

The arguments are those of ``python -m monai.bundle``. Config, metadata and logging files named relative
to the bundle are taken from it (``configs/...``), and ``--bundle_root`` defaults to it. Written into every archive by
``scripts/package_bundle.py`` (as ``<bundle>/__main__.py``).
"""

import ast
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# `python <bundle>` puts the bundle first on the path already; this also covers `python <bundle>/__main__.py`
if sys.path[0] != HERE:
    sys.path.insert(0, HERE)


def _in_bundle(path: str) -> str:
    """``path`` inside the bundle when it is there (``configs/inference.yaml``), else as given."""
    inside = os.path.join(HERE, path)
    return inside if not os.path.isabs(path) and os.path.exists(inside) else path


def _files(value: str) -> str:
    """One file, or several as MONAI takes them (``"['a.yaml','b.yaml']"`` or ``"a.yaml,b.yaml"``)."""
    if value.strip().startswith("["):
        return str([_in_bundle(p) for p in ast.literal_eval(value)])
    return ",".join(_in_bundle(p) for p in value.split(","))


FILE_FLAGS = ("--config_file", "--meta_file", "--logging_file")
args = sys.argv[1:]
for i, arg in enumerate(args):
    flag, eq, value = arg.partition("=")
    if eq and flag in FILE_FLAGS:  # --config_file=configs/inference.yaml
        args[i] = f"{flag}={_files(value)}"
    elif arg in FILE_FLAGS and i + 1 < len(args):
        args[i + 1] = _files(args[i + 1])
if args[:1] == ["run"] and not any(a == "--bundle_root" or a.startswith("--bundle_root=") for a in args):
    args += ["--bundle_root", HERE]
sys.argv = ["monai.bundle", *args]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
