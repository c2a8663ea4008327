"""Encounter CSVs for oxygen-need prediction: one row per encounter, image path + EHR columns + outcomes.

Layout (what ``common.synthetic.ehr_cohort`` writes, and what a hospital export is turned into)::

    encounter_id, [site], [split], image, <EHR columns named in the bundle's feature spec>, [o2_24h, o2_72h]

- ``image``: path of the frontal CXR (PNG/JPEG/DICOM), relative to ``image_root`` (default: the CSV's
  folder) or absolute. An empty cell means no image for that encounter.
- EHR cells may be empty (missing); values outside the spec's plausible range are treated as missing by
  the bundle's transform and reported as imputed.
- ``o2_24h`` / ``o2_72h``: oxygen level needed within 24 h / 72 h (0 room air, 1 low flow, 2 high flow
  or non-invasive ventilation, 3 mechanical ventilation, 4 death). Needed for training and evaluation,
  not for inference. The 72 h level is the maximum within 72 h, so a row with ``o2_72h < o2_24h`` is
  corrected to ``o2_24h`` (and logged).
- ``split`` (train/val/test), when present, fixes the split; otherwise a stable hash of the encounter id
  assigns it, so the split never depends on row order.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import InputDataError
from common.io.atomic import atomic_write_json

logger = logging.getLogger(__name__)

OUTCOME_COLUMNS = ("o2_24h", "o2_72h")
N_LEVELS = 4  # cumulative targets per horizon: level >= 1, 2, 3, 4
SPLITS = ("train", "val", "test")


def cumulative_targets(level_24h: int, level_72h: int, n_levels: int = N_LEVELS) -> list[float]:
    """Targets ``[y24 >= 1, ..., y24 >= n, y72 >= 1, ..., y72 >= n]`` as floats."""
    return [float(level_24h >= k) for k in range(1, n_levels + 1)] + [
        float(level_72h >= k) for k in range(1, n_levels + 1)
    ]


def _hash_split(encounter_id: str, val_fraction: float, test_fraction: float) -> str:
    u = int(hashlib.sha256(encounter_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < test_fraction else ("val" if u < test_fraction + val_fraction else "train")


def _parse_level(path: Path, row_no: int, column: str, cell: str) -> int | None:
    cell = (cell or "").strip()
    if not cell:
        return None
    try:
        level = int(float(cell))
    except ValueError:
        raise InputDataError(path, f"row {row_no}: {column} must be an oxygen level 0-4, got {cell!r}") from None
    if not 0 <= level <= 4 or float(cell) != level:
        raise InputDataError(path, f"row {row_no}: {column} must be an oxygen level 0-4, got {cell!r}")
    return level


def _outside_root(image: str, root: Path) -> str | None:
    """Why ``image`` (a CSV cell) is refused, or None when it names a file inside ``root``."""
    if os.path.isabs(image) or Path(image).drive:
        return f"absolute image path refused: images must be given relative to the image root {root}"
    if os.path.normpath(image).split(os.sep)[0] == os.pardir:
        return f"image path leaves the image root {root} ('..'): refused"
    return None


def _refuse_duplicate_ids(path: Path, rows: list[dict[str, str]]) -> None:
    first: dict[str, int] = {}
    clashes: list[tuple[int, int]] = []
    for row_no, row in enumerate(rows, start=2):
        eid = (row.get("encounter_id") or "").strip()
        if not eid:
            continue
        if eid in first:
            clashes.append((first[eid], row_no))
        else:
            first[eid] = row_no
    if clashes:
        pairs = ", ".join(f"rows {a} and {b}" for a, b in clashes[:5])
        more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise InputDataError(path, f"duplicate encounter_id in {pairs}{more}: every encounter needs its own id")


def read_encounters(
    csv_path: str | os.PathLike,
    feature_names: Sequence[str],
    image_root: str | os.PathLike | None = None,
    require_outcomes: bool = False,
    split: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    allow_outside_root: bool = False,
) -> list[dict[str, Any]]:
    """Read an encounter CSV into datalist items.

    Image paths must stay inside ``image_root``: a CSV is data, and one that names ``../../..`` or
    ``/etc/...`` must not make the bundle open files elsewhere. Such a row keeps its place with an
    ``error`` (``SkipBadCasesDataset`` reports and skips it; inference lists it in ``predictions.csv``)
    unless ``allow_outside_root``. The check is on the path as written (symbolic links inside the root
    are the user's own and are followed).

    Args:
        csv_path: the CSV file.
        feature_names: EHR columns the bundle's feature spec names; each must be a column (cells may be empty).
        image_root: folder that relative image paths start from (default: the CSV's folder).
        require_outcomes: training/evaluation: the outcome columns must exist; rows with an empty outcome
            are skipped (logged by encounter count, never by identifier).
        split: keep only rows of this split (``train``, ``val``, ``test``); None keeps all.
        val_fraction: validation fraction when the CSV has no ``split`` column.
        test_fraction: test fraction when the CSV has no ``split`` column.
        allow_outside_root: accept absolute image paths and paths that leave ``image_root``.

    Returns:
        items ``{"encounter_id", "site", "split", "image", "ehr": {name: cell or None}, ["label", "o2_24h",
        "o2_72h"], ["error"]}``; ``label`` holds the cumulative targets (see ``cumulative_targets``);
        ``error`` says why the row's image is refused (its ``image`` is then empty).

    Raises:
        InputDataError: the file is missing or unreadable, a required column is absent, an outcome
            cell is not a level 0-4, or an ``encounter_id`` appears in more than one row (the rows
            are named, the identifier is not).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputDataError(path, "encounter CSV not found")
    root = Path(image_root) if image_root else path.parent
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputDataError(path, f"cannot read the CSV ({e})") from None
    required = ["encounter_id", "image", *feature_names]
    if require_outcomes:
        required += list(OUTCOME_COLUMNS)
    missing = [c for c in required if c not in columns]
    if missing:
        raise InputDataError(path, f"missing column(s): {', '.join(missing)}")
    has_outcomes = all(c in columns for c in OUTCOME_COLUMNS)

    _refuse_duplicate_ids(path, rows)
    items, skipped, corrected = [], 0, 0
    for row_no, row in enumerate(rows, start=2):
        eid = (row.get("encounter_id") or "").strip() or f"row{row_no}"
        row_split = (row.get("split") or "").strip() or _hash_split(eid, val_fraction, test_fraction)
        if split is not None and row_split != split:
            continue
        image = (row.get("image") or "").strip()
        item: dict[str, Any] = {
            "encounter_id": eid,
            "site": (row.get("site") or "").strip(),
            "split": row_split,
            "image": str(root / image) if image and not os.path.isabs(image) else image,
            "ehr": {name: ((row.get(name) or "").strip() or None) for name in feature_names},
        }
        problem = None if allow_outside_root or not image else _outside_root(image, root)
        if problem:
            item.update({"image": "", "error": f"{path.name} row {row_no}: {problem}"})
        if has_outcomes:
            y24 = _parse_level(path, row_no, "o2_24h", row["o2_24h"])
            y72 = _parse_level(path, row_no, "o2_72h", row["o2_72h"])
            if y24 is None or y72 is None:
                if require_outcomes:
                    skipped += 1
                    continue
            else:
                if y72 < y24:
                    corrected += 1
                    y72 = y24
                item.update({"o2_24h": y24, "o2_72h": y72, "label": cumulative_targets(y24, y72)})
        items.append(item)
    if skipped:
        logger.warning("%s: %d row(s) without an outcome skipped", path.name, skipped)
    if corrected:
        logger.warning("%s: %d row(s) had o2_72h < o2_24h; 72 h level set to the 24 h level", path.name, corrected)
    return items


def load_split(
    dataset_dir: str | os.PathLike,
    csv_name: str,
    split: str | None,
    feature_names: Sequence[str],
    require_outcomes: bool = True,
    max_items: int | None = None,
) -> list[dict[str, Any]]:
    """Items of one split of ``dataset_dir/csv_name`` (a CSV, or a datalist JSON from ``prepare``).

    Bundle configs call this: ``$common.data.oxygen_csv.load_split(@dataset_dir, @csv_name, 'train', ...)``.

    Args:
        dataset_dir: data folder.
        csv_name: CSV (or ``.json`` datalist) inside it.
        split: ``train``, ``val``, ``test`` or None (all rows).
        feature_names: EHR columns of the feature spec.
        require_outcomes: skip rows without outcomes (training, evaluation).
        max_items: keep only the first N items (quick runs); None keeps all.
    """
    path = Path(dataset_dir) / csv_name
    if path.suffix.lower() == ".json":
        import json

        try:
            datalist = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputDataError(path, f"cannot read the datalist ({e})") from None
        key = {"train": "training", "val": "validation", "test": "testing", None: None}[split]
        items = [i for k in ("training", "validation", "testing") for i in datalist.get(k, [])] if key is None \
            else list(datalist.get(key, []))
        for it in items:
            if it.get("image") and not os.path.isabs(it["image"]):
                it["image"] = str(path.parent / it["image"])
    else:
        items = read_encounters(path, feature_names, require_outcomes=require_outcomes, split=split)
        refused = [it for it in items if it.get("error")]
        if refused:  # training and evaluation leave them out: their image is not the one the CSV meant
            for it in refused:
                logger.warning("left out: %s", it["error"])
            items = [it for it in items if not it.get("error")]
    return items[:max_items] if max_items else items


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    feature_spec: str | os.PathLike,
    csv_name: str = "encounters.csv",
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
) -> Path:
    """Write the datalist JSON (``training``/``validation``/``testing``) of an encounter CSV.

    Image paths are written relative to the datalist's folder when they lie under it.

    Args:
        root: the data set folder (holding ``csv_name``) or the CSV itself.
        out: datalist JSON to write.
        feature_spec: the bundle's EHR feature spec (YAML with a ``features`` list of ``name`` entries), e.g.
            the bundle's ``configs/ehr_features.yaml``.
        csv_name: CSV inside ``root``.
        val_fraction: validation fraction when the CSV has no ``split`` column.
        test_fraction: test fraction when the CSV has no ``split`` column.

    Returns:
        the datalist path.
    """
    import yaml

    root = Path(root)
    csv_path = root if root.is_file() else root / csv_name
    spec = yaml.safe_load(Path(feature_spec).read_text())
    names = [f["name"] for f in spec["features"]]
    items = read_encounters(csv_path, names, require_outcomes=False, val_fraction=val_fraction,
                            test_fraction=test_fraction)
    for it in [it for it in items if it.get("error")]:
        logger.warning("left out: %s", it["error"])
    items = [it for it in items if not it.get("error")]
    out = Path(out)
    base = out.parent.resolve()
    for it in items:
        if it["image"]:
            p = Path(it["image"]).resolve()
            it["image"] = os.path.relpath(p, base) if p.is_relative_to(base) else str(p)
    datalist = {
        "training": [i for i in items if i["split"] == "train"],
        "validation": [i for i in items if i["split"] == "val"],
        "testing": [i for i in items if i["split"] == "test"],
    }
    atomic_write_json(out, datalist)
    return out
