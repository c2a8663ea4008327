"""Write a self-contained archive of a bundle: the bundle plus the `common` code it imports.

    python scripts/package_bundle.py --bundle bundles/<name> [--out dist/<name>.zip]

Unpack it with ``python -m zipfile -e <name>.zip DIR`` (or any unzip) and run from inside ``DIR/<name>``:
``python -m monai.bundle run --config_file configs/inference.yaml --bundle_root . --dataset_dir DATA``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

# run as a file (`python scripts/...`): make this checkout's `common` importable first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo_tools.packaging import package_bundle


def main(bundle: str, out: str | None = None) -> str:
    """Package ``bundle``; returns the archive path."""
    path = package_bundle(bundle, out)
    print(path)
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
