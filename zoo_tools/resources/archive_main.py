"""Run this unpacked bundle from any folder, with the `common` package it carries:

    python path/to/<bundle> run --config_file configs/inference.yaml --dataset_dir DATA --output_dir OUT

The arguments are those of ``python -m monai.bundle``. Config, metadata and logging files named relative
to the bundle are found in it, and ``--bundle_root`` defaults to it. Written into every archive by
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
    """``path`` as given when it exists from here, else the same path inside the bundle (when it exists there)."""
    inside = os.path.join(HERE, path)
    return path if os.path.isabs(path) or os.path.exists(path) or not os.path.exists(inside) else inside


def _files(value: str) -> str:
    """One file, or a list of files written as MONAI takes them (``"['a.yaml','b.yaml']"``)."""
    if value.strip().startswith("["):
        return str([_in_bundle(p) for p in ast.literal_eval(value)])
    return _in_bundle(value)


args = sys.argv[1:]
for i, arg in enumerate(args[:-1]):
    if arg in ("--config_file", "--meta_file", "--logging_file"):
        args[i + 1] = _files(args[i + 1])
if "run" in args[:1] and "--bundle_root" not in args:
    args += ["--bundle_root", HERE]
sys.argv = ["monai.bundle", *args]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
