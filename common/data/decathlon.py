"""MSD/decathlon data sets: ``dataset.json`` with ``training``/``validation``/``testing`` lists.

Used by the lung CT segmentation bundle, which reads such a folder directly (``--dataset_dir``), and by
``python scripts/prepare_datalist.py decathlon --root DIR --out datalist.json``, which writes a datalist
with an explicit validation list (a seeded split of ``training`` when the data set has none).

A folder without ``dataset.json`` but with ``imagesTr/`` and ``labelsTr/`` (same file names) is read
too, with ``imagesTs/`` (and ``labelsTs/`` where present) as the test list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from common.errors import InputDataError
from common.io.atomic import atomic_write_json

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha")
TEST_KEYS = ("testing", "test")


def _volumes(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and (p.name.lower().endswith(IMAGE_SUFFIXES) or p.is_dir())
    )


def _read_index(root: str | os.PathLike) -> tuple[dict, Path]:
    """The data set's index (``dataset.json`` content, or one built from the folders) and its base folder."""
    path = Path(root)
    if not path.exists():
        raise InputDataError(path, "does not exist")
    if path.is_file():
        try:
            with open(path) as f:
                return json.load(f), path.parent
        except (OSError, json.JSONDecodeError) as e:
            raise InputDataError(path, f"not a readable datalist JSON ({e})") from None
    if (path / "dataset.json").is_file():
        return _read_index(path / "dataset.json")
    images = _volumes(path / "imagesTr")
    if not images:
        raise InputDataError(path, "no dataset.json and no imagesTr/ folder: not an MSD/decathlon data set")
    index: dict = {"training": [], "testing": []}
    for image in images:
        label = path / "labelsTr" / image.name
        if not label.exists():
            raise InputDataError(image, f"has no label {label.relative_to(path)}")
        index["training"].append({"image": str(image.relative_to(path)), "label": str(label.relative_to(path))})
    for image in _volumes(path / "imagesTs"):
        item = {"image": str(image.relative_to(path))}
        if (path / "labelsTs" / image.name).exists():
            item["label"] = str(Path("labelsTs") / image.name)
        index["testing"].append(item)
    return index, path


def split_training(items: list[dict], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Seeded split into (training, validation); at least one case in each when there are two or more."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = int(round(len(items) * val_fraction))
    if len(items) >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), len(items) - 1)
    val_idx = set(order[:n_val].tolist())
    train = [item for i, item in enumerate(items) if i not in val_idx]
    val = [item for i, item in enumerate(items) if i in val_idx]
    return train, val


def _normalise(items: list, base: Path, source: Path, key: str, require_labels: bool) -> list[dict]:
    out = []
    for item in items:
        entry = dict(item) if isinstance(item, dict) else {"image": item}
        for field in ("image", "label"):
            if field in entry and isinstance(entry[field], str) and not os.path.isabs(entry[field]):
                entry[field] = str(base / entry[field])
        if require_labels and "label" not in entry:
            raise InputDataError(source, f"an item of {key!r} has no label: {entry.get('image')}")
        out.append(entry)
    return out


def load_datalist(
    root: str | os.PathLike,
    key: str = "training",
    val_fraction: float = 0.2,
    seed: int = 0,
    require_labels: bool | None = None,
    check_files: bool = True,
) -> list[dict]:
    """One list of an MSD/decathlon data set, with absolute paths.

    ``training`` and ``validation`` come from the data set; when it has no ``validation`` list, both are
    a seeded split of ``training`` (the same ``val_fraction``/``seed`` give the same split, so a
    training and a validation call agree). ``testing`` also accepts MSD's ``test`` key.

    Args:
        root: a data set folder (with ``dataset.json``, or ``imagesTr``/``labelsTr``) or a datalist JSON.
        key: ``training``, ``validation`` or ``testing``.
        val_fraction: share of ``training`` used for validation when there is no validation list.
        seed: seed of that split.
        require_labels: every item must have a label (default: for training and validation).
        check_files: raise if an image or label does not exist.

    Raises:
        InputDataError: the data set or a listed file cannot be used.
    """
    index, base = _read_index(root)
    source = Path(root)
    if require_labels is None:
        require_labels = key in ("training", "validation")
    if key in TEST_KEYS:
        found = next((k for k in TEST_KEYS if k in index), None)
        if found is None:
            raise InputDataError(source, "has no 'testing' (or 'test') list")
        items = index[found]
    elif key in ("training", "validation"):
        if "training" not in index:
            raise InputDataError(source, "has no 'training' list")
        if "validation" in index:
            items = index[key]
        else:
            train, val = split_training(index["training"], val_fraction, seed)
            items = train if key == "training" else val
    elif key in index:
        items = index[key]
    else:
        raise InputDataError(source, f"has no {key!r} list")
    items = _normalise(items, base, source, key, require_labels)
    if check_files:
        for item in items:
            for field in ("image", "label"):
                if field in item and not Path(item[field]).exists():
                    raise InputDataError(item[field], f"listed in {source} ({key}) but does not exist")
    return items


def prepare(
    root: str | os.PathLike, out: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0
) -> Path:
    """Write the datalist of an MSD/decathlon data set with explicit training/validation/testing lists.

    Args:
        root: the data set folder or its ``dataset.json``.
        out: the datalist JSON to write; its paths are relative to its own folder.
        val_fraction: share of ``training`` used for validation when the data set has no validation list.
        seed: seed of that split.

    Returns:
        the datalist path.
    """
    index, _ = _read_index(root)
    out = Path(out)
    out_dir = out.parent.resolve()
    lists = {key: load_datalist(root, key, val_fraction, seed) for key in ("training", "validation")}
    has_test = any(k in index for k in TEST_KEYS)
    lists["testing"] = load_datalist(root, "testing", require_labels=False) if has_test else []

    def relative(items: list[dict]) -> list[dict]:
        return [
            {k: os.path.relpath(Path(v).resolve(), out_dir) if k in ("image", "label") else v for k, v in item.items()}
            for item in items
        ]

    datalist = {k: v for k, v in index.items() if k not in ("training", "validation", *TEST_KEYS)}
    datalist.update(
        {
            "source": str(Path(root).resolve()),
            "validation_split": "from the data set" if "validation" in index else f"seeded split: val_fraction={val_fraction}, seed={seed}",
            "numTraining": len(lists["training"]),
            "numValidation": len(lists["validation"]),
            "numTest": len(lists["testing"]),
            "training": relative(lists["training"]),
            "validation": relative(lists["validation"]),
            "testing": relative(lists["testing"]),
        }
    )
    return atomic_write_json(out, datalist)
