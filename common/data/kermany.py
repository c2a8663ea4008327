"""Datalists for the two Kermany et al. (Cell 2018) layouts, read as they are published.

OCT2017 (retinal OCT B-scans)::

    OCT2017/train/{CNV,DME,DRUSEN,NORMAL}/CNV-1016042-1.jpeg     <CLASS>-<patient>-<n>
    OCT2017/test/...

ChestXRay2017 (pediatric chest X-rays)::

    chest_xray/train/NORMAL/IM-0115-0001.jpeg                    patient IM-0115
    chest_xray/train/NORMAL/NORMAL2-IM-0383-0001.jpeg            patient IM-0383
    chest_xray/train/PNEUMONIA/person1000_bacteria_2931.jpeg     patient person1000, BACTERIAL
    chest_xray/train/PNEUMONIA/person3_virus_15.jpeg             patient person3, VIRAL
    chest_xray/test/...

``root`` may be the folder that holds ``OCT2017/`` or ``chest_xray/``, the folder that holds ``train/``
and ``test/`` directly, or a folder with only the class sub-folders (``NORMAL/``, ``PNEUMONIA/``), which
is then the training pool. DICOM (``.dcm``) and PNG files are accepted next to JPEGs; a CXR folder may
also use ``BACTERIAL/`` and ``VIRAL/`` sub-folders instead of encoding the subtype in the file name.

Validation is a seeded **patient-level** split of the training pool: all images of one patient land on
the same side, so that validation figures are not inflated by near-duplicate images of a patient the
model was trained on. Patients are assigned per class (by the class most of their images have), so each
class keeps about ``val_fraction`` of its images in validation.

Every entry is ``{"image", "label", "class_name", "patient"}``; ``patient`` is the pseudonymous id from
the file name (or a hash of the DICOM PatientID), used for grouping only and never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputDataError
from common.io.atomic import atomic_write_json

logger = logging.getLogger(__name__)

OCT_CLASSES: tuple[str, ...] = ("CNV", "DME", "DRUSEN", "NORMAL")
CXR_CLASSES_3: tuple[str, ...] = ("NORMAL", "BACTERIAL", "VIRAL")
CXR_CLASSES_2: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpeg", ".jpg", ".png", ".dcm", ".tif", ".tiff", ".bmp")

_SPLITS = ("train", "validation", "test", "all")
_OCT_NAME = re.compile(r"^(CNV|DME|DRUSEN|NORMAL)-(\d+)-\d+", re.IGNORECASE)
_CXR_PNEUMONIA_NAME = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
_CXR_NORMAL_NAME = re.compile(r"^(?:NORMAL\d*-)?(IM-\d+)-", re.IGNORECASE)
_DATASET_FOLDER = {"oct": ("OCT2017", "OCT2017 ", "OCT"), "cxr": ("chest_xray", "ChestXRay2017", "chest_xray2017")}


def class_names(kind: str, classes: int = 3) -> tuple[str, ...]:
    """Class names in label order for ``kind`` ("oct" or "cxr"; ``classes`` 2 or 3 for CXR)."""
    if kind == "oct":
        return OCT_CLASSES
    if kind == "cxr":
        if classes not in (2, 3):
            raise ValueError(f"classes must be 2 (NORMAL/PNEUMONIA) or 3 (NORMAL/BACTERIAL/VIRAL), got {classes}")
        return CXR_CLASSES_3 if classes == 3 else CXR_CLASSES_2
    raise ValueError(f"kind must be 'oct' or 'cxr', got {kind!r}")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _folder_classes(kind: str) -> set[str]:
    return set(OCT_CLASSES) if kind == "oct" else {"NORMAL", "PNEUMONIA", "BACTERIAL", "VIRAL"}


def _has_class_dirs(folder: Path, kind: str) -> bool:
    known = _folder_classes(kind)
    return folder.is_dir() and any(c.is_dir() and c.name.upper() in known for c in folder.iterdir())


def locate_splits(root: str | os.PathLike, kind: str) -> dict[str, Path]:
    """Find the ``train`` (pool) and ``test`` folders of a Kermany layout under ``root``.

    Args:
        root: the data set folder (see the module docstring for the accepted shapes).
        kind: "oct" or "cxr".

    Returns:
        ``{"train": folder, "test": folder}``; ``test`` is missing when the layout has none (a folder of
        class sub-folders only). A Kaggle-style ``val/`` folder is returned as ``"val"`` and pooled with
        ``train`` (it is too small to validate on, and its patients may overlap).

    Raises:
        InputDataError: ``root`` does not exist or holds no class folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputDataError(root, "data set folder not found")
    if _has_class_dirs(root, kind):
        return {"train": root}
    candidates = [root] + [root / name for name in _DATASET_FOLDER[kind]]
    # published archives sometimes nest the folder twice (chest_xray/chest_xray/train)
    candidates += [c / c.name for c in list(candidates)]
    for base in candidates:
        if not base.is_dir():
            continue
        found = {}
        for child in sorted(base.iterdir()):
            split = {"train": "train", "test": "test", "val": "val", "validation": "val"}.get(child.name.lower())
            if split and _has_class_dirs(child, kind):
                found[split] = child
        if "train" in found or "test" in found:
            return found
    expected = "{CNV,DME,DRUSEN,NORMAL}" if kind == "oct" else "{NORMAL,PNEUMONIA}"
    raise InputDataError(root, f"no Kermany {kind.upper()} layout found: expected train/{expected}/ or {expected}/")


def _dicom_patient(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception as exc:  # an unreadable file is reported by the image loader, here it only loses grouping
        logger.debug("cannot read DICOM header of %s: %s", path.name, type(exc).__name__)
        return None
    pid = str(getattr(ds, "PatientID", "") or "")
    # hashed, so that a datalist written to disk carries no identifier from the header
    return "dcm-" + hashlib.sha256(pid.encode()).hexdigest()[:16] if pid else None


def parse_oct_file(path: str | os.PathLike, folder_class: str) -> tuple[str, str]:
    """Class and patient of one OCT2017 file.

    Args:
        path: the image file, named ``<CLASS>-<patient>-<n>.<ext>`` in OCT2017.
        folder_class: the class sub-folder it is in (authoritative for the label).

    Returns:
        ``(class_name, patient)``; a name that does not follow the pattern is its own patient.
    """
    path = Path(path)
    match = _OCT_NAME.match(path.name)
    if match:
        return folder_class, f"oct-{match.group(2)}"
    patient = _dicom_patient(path) if path.suffix.lower() == ".dcm" else None
    return folder_class, patient or f"file-{path.stem}"


def parse_cxr_file(path: str | os.PathLike, folder_class: str) -> tuple[str, str]:
    """Three-class label and patient of one ChestXRay2017 file.

    Args:
        path: the image file.
        folder_class: the class sub-folder (NORMAL, PNEUMONIA, BACTERIAL or VIRAL).

    Returns:
        ``(class_name, patient)`` with class_name in NORMAL/BACTERIAL/VIRAL; for a file under PNEUMONIA/
        the subtype comes from the name (``personN_bacteria_M`` / ``personN_virus_M``) and is
        ``"PNEUMONIA"`` when the name does not say.
    """
    path = Path(path)
    folder_class = folder_class.upper()
    pneu = _CXR_PNEUMONIA_NAME.match(path.name)
    normal = _CXR_NORMAL_NAME.match(path.name)
    if folder_class in ("BACTERIAL", "VIRAL"):
        label = folder_class
    elif folder_class == "PNEUMONIA":
        label = {"bacteria": "BACTERIAL", "virus": "VIRAL"}[pneu.group(2).lower()] if pneu else "PNEUMONIA"
    else:
        label = "NORMAL"
    if pneu:
        patient = pneu.group(1).lower()
    elif normal:
        # NORMAL2-IM-0383 and IM-0383 are grouped together: if they are one child, the split stays clean;
        # if they are two, a slightly coarser grouping costs nothing.
        patient = normal.group(1).upper()
    else:
        patient = (_dicom_patient(path) if path.suffix.lower() == ".dcm" else None) or f"file-{path.stem}"
    return label, patient


def scan_folder(folder: str | os.PathLike, kind: str, classes: int = 3) -> list[dict[str, Any]]:
    """All labelled images under the class sub-folders of ``folder`` (one split of a Kermany layout).

    Args:
        folder: a folder holding class sub-folders.
        kind: "oct" or "cxr".
        classes: for "cxr", 3 (NORMAL/BACTERIAL/VIRAL) or 2 (NORMAL/PNEUMONIA).

    Returns:
        entries ``{"image", "label", "class_name", "patient"}`` sorted by file path.

    Raises:
        InputDataError: a pneumonia image whose subtype cannot be told in 3-class mode, or no images.
    """
    names = class_names(kind, classes)
    known = _folder_classes(kind)
    entries = []
    for class_dir in sorted(Path(folder).iterdir()):
        if not class_dir.is_dir() or class_dir.name.upper() not in known:
            continue
        for path in sorted(p for p in class_dir.rglob("*") if _is_image(p)):
            if kind == "oct":
                label, patient = parse_oct_file(path, class_dir.name.upper())
            else:
                label, patient = parse_cxr_file(path, class_dir.name)
                if classes == 2:
                    label = "NORMAL" if label == "NORMAL" else "PNEUMONIA"
                elif label == "PNEUMONIA":
                    raise InputDataError(
                        path,
                        "pneumonia subtype unknown: name it personN_bacteria_M / personN_virus_M, put it under "
                        "BACTERIAL/ or VIRAL/, or use 2 classes (classes=2)",
                    )
            entries.append({"image": str(path), "label": names.index(label), "class_name": label, "patient": patient})
    if not entries:
        raise InputDataError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class sub-folders")
    return entries


def patient_split(
    entries: Sequence[dict[str, Any]], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split entries into training and validation so that no patient is on both sides.

    Patients are grouped by the class most of their images have; within each class they are shuffled
    with ``seed`` and moved to validation until about ``val_fraction`` of that class's images are there.
    The same entries, fraction and seed always give the same split.

    Args:
        entries: datalist entries with ``label`` and ``patient``.
        val_fraction: share of images per class for validation, in [0, 1).
        seed: random seed.

    Returns:
        ``(train, validation)``, each in the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(entries):
        by_patient[e["patient"]].append(i)
    patients_by_class: dict[int, list[str]] = defaultdict(list)
    for patient in sorted(by_patient):
        labels = Counter(entries[i]["label"] for i in by_patient[patient])
        patients_by_class[min(labels, key=lambda k: (-labels[k], k))].append(patient)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for label in sorted(patients_by_class):
        patients = patients_by_class[label]
        order = rng.permutation(len(patients))
        target = val_fraction * sum(len(by_patient[p]) for p in patients)
        taken, moved = 0, 0
        for k in order:
            # keep at least one patient of every class for training
            if taken >= target or moved >= len(patients) - 1:
                break
            val_patients.add(patients[k])
            moved += 1
            taken += len(by_patient[patients[k]])
    train = [e for e in entries if e["patient"] not in val_patients]
    val = [e for e in entries if e["patient"] in val_patients]
    return train, val


def _relative(entries: list[dict[str, Any]], base: Path) -> list[dict[str, Any]]:
    return [{**e, "image": os.path.relpath(e["image"], base)} for e in entries]


def build_datalist(
    root: str | os.PathLike, kind: str, val_fraction: float = 0.1, seed: int = 0, classes: int = 3
) -> dict[str, Any]:
    """The full datalist of a Kermany layout: ``training``, ``validation`` (patient-level), ``testing``.

    Args:
        root: see the module docstring.
        kind: "oct" or "cxr".
        val_fraction: share of the training pool's images (per class) held out for validation.
        seed: seed of the patient-level split.
        classes: for "cxr", 3 or 2.

    Returns:
        a dict with absolute image paths, the class names and the split parameters.
    """
    splits = locate_splits(root, kind)
    pool = []
    for name in ("train", "val"):
        if name in splits:
            pool += scan_folder(splits[name], kind, classes)
    train, val = patient_split(pool, val_fraction, seed) if pool else ([], [])
    test = scan_folder(splits["test"], kind, classes) if "test" in splits else []
    return {
        "classes": list(class_names(kind, classes)),
        "split": {"level": "patient", "val_fraction": val_fraction, "seed": seed},
        "training": train,
        "validation": val,
        "testing": test,
    }


def datalist(
    dataset_dir: str | os.PathLike,
    kind: str,
    split: str = "train",
    val_fraction: float = 0.1,
    seed: int = 0,
    classes: int = 3,
    datalist: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """One split of a Kermany data set, for bundle configs (``$common.data.kermany.datalist(...)``).

    Args:
        dataset_dir: the data set folder (any shape the module docstring lists).
        kind: "oct" or "cxr".
        split: "train" (training part of the pool), "validation" (patient-level hold-out of the pool),
            "test" (the layout's test/ folder) or "all" (pool + test).
        val_fraction: share of the pool held out for validation.
        seed: seed of the patient-level split.
        classes: for "cxr", 3 or 2.
        datalist: optional JSON written by ``scripts/prepare_datalist.py``; its paths are relative to
            ``dataset_dir``. When given, the folder is not scanned.

    Returns:
        entries ``{"image", "label", "class_name", "patient"}``.

    Raises:
        InputDataError: the split is empty (e.g. "test" for a folder without test/).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    key = {"train": "training", "validation": "validation", "test": "testing"}
    if datalist:
        with open(datalist, encoding="utf-8") as f:
            data = json.load(f)
        base = Path(dataset_dir)
        for k in ("training", "validation", "testing"):
            data[k] = [{**e, "image": str(base / e["image"])} for e in data.get(k, [])]
    else:
        data = build_datalist(dataset_dir, kind, val_fraction, seed, classes)
    if split == "all":
        items = data["training"] + data["validation"] + data["testing"]
    else:
        items = data[key[split]]
    if not items:
        raise InputDataError(datalist or dataset_dir, f"the {split!r} split is empty")
    counts = Counter(e["class_name"] for e in items)
    logger.info("%s %s split: %d images, %s", kind.upper(), split, len(items), dict(sorted(counts.items())))
    return items


def image_files(path: str | os.PathLike) -> list[dict[str, str]]:
    """Unlabelled images for inference: one file, or every image under a folder (recursively, sorted).

    Args:
        path: an image file or a folder.

    Returns:
        entries ``{"image": path}``.

    Raises:
        InputDataError: nothing to infer on.
    """
    path = Path(path)
    if path.is_file():
        return [{"image": str(path)}]
    if not path.is_dir():
        raise InputDataError(path, "input file or folder not found")
    files = sorted(str(p) for p in path.rglob("*") if _is_image(p))
    if not files:
        raise InputDataError(path, f"no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return [{"image": f} for f in files]


def _prepare(root: str, out: str, kind: str, val_fraction: float, seed: int, classes: int) -> Path:
    data = build_datalist(root, kind, val_fraction, seed, classes)
    base = Path(root).resolve()
    for k in ("training", "validation", "testing"):
        data[k] = _relative([{**e, "image": str(Path(e["image"]).resolve())} for e in data[k]], base)
    data["description"] = (
        f"Kermany {'OCT2017' if kind == 'oct' else 'ChestXRay2017'} datalist; image paths relative to the "
        "data set folder (pass it as --dataset_dir)"
    )
    return atomic_write_json(out, data)


def prepare_oct2017(root: str, out: str, val_fraction: float = 0.1, seed: int = 0) -> Path:
    """Write the OCT2017 datalist JSON (``scripts/prepare_datalist.py oct2017``).

    Args:
        root: the OCT2017 folder (or its parent, or the folder holding train/ and test/).
        out: datalist JSON to write; image paths in it are relative to ``root``.
        val_fraction: share of training images per class held out for validation, split by patient.
        seed: seed of the patient-level split.

    Returns:
        the datalist path.
    """
    return _prepare(root, out, "oct", val_fraction, seed, 3)


def prepare_chestxray2017(root: str, out: str, val_fraction: float = 0.1, seed: int = 0, classes: int = 3) -> Path:
    """Write the ChestXRay2017 datalist JSON (``scripts/prepare_datalist.py chestxray2017``).

    Args:
        root: the chest_xray folder (or its parent, the folder holding train/ and test/, or a folder with
            only NORMAL/ and PNEUMONIA/).
        out: datalist JSON to write; image paths in it are relative to ``root``.
        val_fraction: share of training images per class held out for validation, split by patient.
        seed: seed of the patient-level split.
        classes: 3 (NORMAL/BACTERIAL/VIRAL, subtype from the file name) or 2 (NORMAL/PNEUMONIA).

    Returns:
        the datalist path.
    """
    return _prepare(root, out, "cxr", val_fraction, seed, classes)
