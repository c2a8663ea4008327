"""LUNA16 layout -> MONAI detection datalist.

The layout (as distributed by the LUNA16 challenge, and as ``scripts/make_synthetic.py nodules`` writes it)::

    ROOT/
      subset0/<seriesuid>.mhd (+ .raw)      volumes (any folder depth; NIfTI .nii/.nii.gz accepted too)
      subset1/...
      annotations.csv                       seriesuid,coordX,coordY,coordZ,diameter_mm[,malignancy]
      seg-lungs-LUNA16/                     lung masks (ignored here)

``coordX/Y/Z`` are world millimetres in the volume's physical space, which for MHD (ITK) and DICOM is
**LPS**; ``diameter_mm`` is the nodule diameter; the optional ``malignancy`` column holds an LIDC rating
1-5 (empty or 0: unknown).

The datalist (``{"training": [...], "validation": [...]}``) has one entry per scan::

    {"image": "subset0/1.3.6...mhd", "seriesuid": "1.3.6...",
     "box": [[x, y, z, d, d, d], ...],      # world mm, LPS, mode cccwhd (centre, size)
     "label": [0, ...],                    # class 0: nodule
     "malignancy": [3, ...],               # 1-5, 0 unknown
     "ignore_box": [[x, y, z, d, d, d]]}   # nodules above max_diameter_mm (masses): neither target nor FP

Paths are relative to ROOT (``load_decathlon_datalist(..., base_dir=ROOT)`` resolves them). Scans without
any annotation are kept with empty lists: they teach the detector what is not a nodule.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import InputDataError
from common.io.atomic import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = [
    "REQUIRED_COLUMNS",
    "find_volumes",
    "read_annotations",
    "build_datalist",
    "prepare",
    "load_datalist",
]

REQUIRED_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
_VOLUME_SUFFIXES = (".mhd", ".nii.gz", ".nii")
# lung and nodule masks share the scans' series UIDs and file types: never take them for scans
_SKIP_FOLDERS = ("seg-lungs-LUNA16", "seg-lungs", "nodule_masks")


def _series_uid(path: Path) -> str | None:
    name = path.name
    for suffix in _VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def find_volumes(root: str | os.PathLike) -> dict[str, Path]:
    """Map every series UID under ``root`` to its volume (MHD preferred over NIfTI for the same UID).

    Lung-mask folders (``seg-lungs-LUNA16``) are skipped.
    """
    root = Path(root)
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_FOLDERS and not d.startswith("."))
        for name in sorted(filenames):
            uid = _series_uid(Path(name))
            if uid is None:
                continue
            path = Path(dirpath) / name
            if uid not in found or (path.suffix == ".mhd" and found[uid].suffix != ".mhd"):
                found[uid] = path
    return found


def _parse_float(value: str | None) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    return float(value)


def read_annotations(csv_path: str | os.PathLike) -> dict[str, list[dict[str, float]]]:
    """Read a LUNA16 ``annotations.csv``: per series UID a list of ``{x, y, z, diameter_mm, malignancy}``.

    Raises:
        InputDataError: the file is missing, a required column is missing, or a value is not a number.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputDataError(csv_path, "annotations file not found")
    out: dict[str, list[dict[str, float]]] = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise InputDataError(
                csv_path, f"missing column(s) {', '.join(missing)}; found {', '.join(columns)}"
            )
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            try:
                x, y, z, diameter = (float(row[c]) for c in REQUIRED_COLUMNS[1:])
                malignancy = _parse_float(row.get("malignancy"))
            except (TypeError, ValueError):
                raise InputDataError(
                    csv_path, f"line {line}: coordX/Y/Z, diameter_mm and malignancy must be numbers"
                ) from None
            if diameter <= 0:
                raise InputDataError(csv_path, f"line {line}: diameter_mm must be positive, got {diameter}")
            rating = int(round(malignancy)) if malignancy is not None and 1 <= malignancy <= 5 else 0
            out.setdefault(row["seriesuid"].strip(), []).append(
                {"x": x, "y": y, "z": z, "diameter_mm": diameter, "malignancy": rating}
            )
    return out


def build_datalist(
    root: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    max_diameter_mm: float = 30.0,
    relative: bool = True,
) -> list[dict[str, Any]]:
    """One datalist entry per volume under ``root`` (see the module docstring), sorted by series UID.

    Args:
        root: the data set folder.
        annotations: the CSV (default ``root/annotations.csv``).
        max_diameter_mm: nodules larger than this (masses, > 30 mm in LUNA16/LIDC practice) go to
            ``ignore_box`` instead of ``box``.
        relative: image paths relative to ``root`` (else absolute).
    """
    root = Path(root)
    volumes = find_volumes(root)
    if not volumes:
        raise InputDataError(root, "no .mhd, .nii or .nii.gz volumes found (LUNA16 layout expected)")
    nodules = read_annotations(annotations or root / "annotations.csv")
    unknown = sorted(set(nodules) - set(volumes))
    if unknown:
        logger.warning("%d annotated series have no volume under %s; they are left out", len(unknown), root)
    entries = []
    for uid, path in sorted(volumes.items()):
        entry: dict[str, Any] = {
            "image": str(path.relative_to(root)) if relative else str(path.resolve()),
            "seriesuid": uid,
            "box": [],
            "label": [],
            "malignancy": [],
            "ignore_box": [],
        }
        for n in nodules.get(uid, []):
            d = n["diameter_mm"]
            box = [n["x"], n["y"], n["z"], d, d, d]
            if d > max_diameter_mm:
                entry["ignore_box"].append(box)
                continue
            entry["box"].append(box)
            entry["label"].append(0)
            entry["malignancy"].append(n["malignancy"])
        entries.append(entry)
    return entries


def _split(
    entries: list[dict[str, Any]], val_fraction: float, seed: int, val_subsets: Sequence[str] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if val_subsets:
        wanted = set(val_subsets)
        val = [e for e in entries if wanted & set(Path(e["image"]).parts)]
        train = [e for e in entries if e not in val]
        return train, val
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    n_val = int(round(val_fraction * len(entries)))
    if val_fraction > 0 and len(entries) > 1:
        n_val = min(max(n_val, 1), len(entries) - 1)
    val_idx = set(order[:n_val])
    return [e for i, e in enumerate(entries) if i not in val_idx], [
        e for i, e in enumerate(entries) if i in val_idx
    ]


def read_split_file(root: str | os.PathLike) -> dict[str, list[str]] | None:
    """Series UIDs per split from ``root/dataset.yaml`` (written by ``scripts/make_synthetic.py nodules``):
    ``{"training": [...], "validation": [...], "test": [...]}``, or None when there is no such file/section."""
    path = Path(root) / "dataset.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        splits = (yaml.safe_load(path.read_text()) or {}).get("splits")
    except (OSError, yaml.YAMLError) as err:
        raise InputDataError(path, f"cannot read the split lists ({err})") from None
    if not isinstance(splits, dict):
        return None
    names = {
        "train": "training",
        "training": "training",
        "val": "validation",
        "validation": "validation",
        "test": "test",
    }
    return {names[k]: [str(u) for u in v or []] for k, v in splits.items() if k in names}


def _splits(
    entries: list[dict[str, Any]],
    root: str | os.PathLike,
    val_fraction: float,
    seed: int,
    val_subsets: Sequence[str] | None,
    use_split_file: bool,
) -> dict[str, list[dict[str, Any]]]:
    fixed = read_split_file(root) if use_split_file and not val_subsets else None
    if fixed:
        by_uid = {e["seriesuid"]: e for e in entries}
        out = {name: [by_uid[u] for u in uids if u in by_uid] for name, uids in fixed.items()}
        listed = {u for uids in fixed.values() for u in uids}
        unlisted = [e for e in entries if e["seriesuid"] not in listed]
        if unlisted:
            logger.warning("%d scans are in no split of dataset.yaml; they go to training", len(unlisted))
            out.setdefault("training", []).extend(unlisted)
        return out
    train, val = _split(entries, val_fraction, seed, val_subsets)
    return {"training": train, "validation": val}


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_diameter_mm: float = 30.0,
    annotations: str | None = None,
    val_subsets: Sequence[str] | str | None = None,
    use_split_file: bool = True,
) -> Path:
    """Write the detection datalist JSON for a LUNA16-layout folder.

    Args:
        root: the data set folder.
        out: the datalist JSON to write (atomically).
        val_fraction: share of scans put in ``validation`` (random, by scan, with ``seed``).
        seed: random seed of the split.
        max_diameter_mm: larger nodules are masses: ``ignore_box``, neither training target nor false positive.
        annotations: CSV path (default ``root/annotations.csv``).
        val_subsets: folder names (e.g. ``subset9``) whose scans form ``validation`` instead of a random split.
        use_split_file: when ``root/dataset.yaml`` lists ``splits`` (train/val/test series UIDs, as the
            synthetic generator writes), use them (``training``, ``validation``, ``test``).

    Returns:
        the datalist path.
    """
    if isinstance(val_subsets, str):
        val_subsets = [s.strip() for s in val_subsets.split(",") if s.strip()]
    entries = build_datalist(root, annotations, max_diameter_mm=max_diameter_mm)
    splits = _splits(entries, root, val_fraction, seed, val_subsets, use_split_file)
    datalist = {
        "description": "LUNA16-layout detection datalist; boxes are world mm (LPS), mode cccwhd",
        "root": str(Path(root).resolve()),
        "max_diameter_mm": max_diameter_mm,
        **splits,
    }
    logger.info("scans per split: %s", {k: len(v) for k, v in splits.items()})
    return atomic_write_json(out, datalist)


def load_datalist(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    split: str = "training",
    val_fraction: float = 0.2,
    seed: int = 0,
    max_diameter_mm: float = 30.0,
) -> list[dict[str, Any]]:
    """Entries of one split with absolute image paths, from a datalist JSON or straight from the layout.

    Args:
        dataset_dir: the LUNA16-layout folder; relative image paths are resolved against it.
        datalist: a datalist JSON written by ``prepare``; empty or None builds it from ``dataset_dir``
            (the splits of ``dataset_dir/dataset.yaml`` when it has them, else a random split by
            ``val_fraction`` and ``seed``; ``max_diameter_mm`` applies).
        split: ``training``, ``validation``, ``all`` (both) or any other key of the JSON (e.g. ``test``).
    """
    import json

    dataset_dir = Path(dataset_dir)
    if datalist:
        path = Path(datalist)
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InputDataError(path, f"cannot read the datalist ({err})") from None
        splits = content if isinstance(content, dict) else {"training": content}
    else:
        train, val = _split(
            build_datalist(dataset_dir, max_diameter_mm=max_diameter_mm), val_fraction, seed, None
        )
        splits = {"training": train, "validation": val}
    if split == "all":
        entries = list(splits.get("training", [])) + list(splits.get("validation", []))
    elif split in splits:
        entries = list(splits[split])
    else:
        raise InputDataError(
            datalist or dataset_dir,
            f"no split {split!r} (has {', '.join(k for k in splits if isinstance(splits[k], list))})",
        )
    resolved = []
    for entry in entries:
        entry = dict(entry)
        image = Path(entry["image"])
        entry["image"] = str(image if image.is_absolute() else dataset_dir / image)
        resolved.append(entry)
    return resolved
