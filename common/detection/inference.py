"""Inference inputs and outputs of the nodule detector: what to read, and the per-scan JSON it writes.

Output, one JSON per scan (``<output_dir>/<scan>_nodules.json``, written atomically)::

    {"image": "1.3.6....mhd",
     "coordinate_system": "LPS", "units": "mm", "box_mode": "cccwhd",
     "num_detections": 2,
     "detections": [                      # sorted by decreasing score
        {"center": [x, y, z], "size": [sx, sy, sz], "score": 0.97,
         "malignancy": {"rating": 4, "probabilities": [p1, p2, p3, p4, p5]}},
        ...]}

``center`` is in the same world frame as LUNA16's ``annotations.csv`` (and as MHD/DICOM physical space):
LPS, x growing to the patient's left, y to posterior, z to superior (head). For RAS (NIfTI/MONAI
viewers) negate x and y. A scan without findings gets ``"detections": []``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from common.data.ct_inputs import ct_cases
from common.errors import InputDataError
from common.io.atomic import atomic_path, atomic_write_json
from common.io.naming import UniqueNames

logger = logging.getLogger(__name__)

__all__ = [
    "list_inputs",
    "scan_name",
    "detections_to_json",
    "DetectionWriter",
    "draw_boxes",
    "world_lps_to_voxel",
]

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".dcm")


def list_inputs(path: str | os.PathLike) -> list[dict[str, str]]:
    """Datalist ``[{"image": ...}]`` for whatever a user points inference at.

    Accepted: one volume file (NIfTI, MHD, a single DICOM file); a DICOM series folder; a folder of volumes
    and/or DICOM series folders (searched recursively, lung-mask folders skipped); a datalist JSON (a list,
    or a dict whose ``testing`` (or ``test``, as ``scripts/prepare_datalist.py luna16`` writes it), ``validation``
    or ``training`` lists are used, in that order of preference, with relative paths resolved against the
    JSON's folder).

    Raises:
        InputDataError: nothing usable at ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(path, "no such file or folder")
    if path.is_file() and path.suffix == ".json":
        try:
            content = json.loads(path.read_text())
        except ValueError as err:
            raise InputDataError(path, f"not valid JSON ({err})") from None
        if isinstance(content, dict):
            for key in ("testing", "test", "validation", "training"):
                if content.get(key):
                    content = content[key]
                    break
        if not isinstance(content, list) or not content:
            raise InputDataError(path, "no list of images (testing/test/validation/training) in this datalist")
        items = [{"image": c} if isinstance(c, str) else dict(c) for c in content]
        for item in items:
            image = Path(item["image"])
            item["image"] = str(image if image.is_absolute() else path.parent / image)
        return items
    if path.is_file():
        return [{"image": str(path)}]
    found = ct_cases(path, recursive=True, skip_folder=lambda name: name.startswith("seg-lungs") or name == "nodule_masks")
    if not found:
        raise InputDataError(path, "no CT volume (.nii, .nii.gz, .mhd) or DICOM series found")
    return [{"image": case} for case in found]


def scan_name(filename: str | os.PathLike) -> str:
    """The scan's name for output files: the file name without its volume suffix, or the series folder name."""
    name = Path(str(filename)).name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _numpy(x: Any, shape_tail: tuple[int, ...]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x if x is not None else np.zeros((0, *shape_tail)), dtype=np.float64).reshape(
        (-1, *shape_tail)
    )


def detections_to_json(
    boxes: Any, scores: Any, malignancy: Any | None = None, score_threshold: float = 0.0
) -> list[dict[str, Any]]:
    """JSON-ready detections sorted by decreasing score.

    Args:
        boxes: ``(N, 6)`` world boxes ``cccwhd`` (mm).
        scores: ``(N,)`` scores.
        malignancy: ``(N, 5)`` rating probabilities (or None).
        score_threshold: detections scoring below are left out.
    """
    boxes, scores = _numpy(boxes, (6,)), _numpy(scores, ()).reshape(-1)
    probs = _numpy(malignancy, (5,)) if malignancy is not None and np.size(malignancy) else None
    out = []
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] < score_threshold:
            continue
        det: dict[str, Any] = {
            "center": [round(float(v), 3) for v in boxes[i, :3]],
            "size": [round(float(v), 3) for v in boxes[i, 3:]],
            "score": round(float(scores[i]), 5),
        }
        if probs is not None:
            det["malignancy"] = {
                "rating": int(np.argmax(probs[i])) + 1,
                "probabilities": [round(float(p), 5) for p in probs[i]],
            }
        out.append(det)
    return out


def world_lps_to_voxel(boxes_cccwhd: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    """World LPS ``cccwhd`` boxes -> voxel corner boxes ``(N, 6)`` (min x, y, z, max x, y, z, float) of the
    grid with RAS ``affine_ras``."""
    boxes = np.asarray(boxes_cccwhd, dtype=np.float64).reshape(-1, 6)
    lo, hi = boxes[:, :3] - boxes[:, 3:] / 2, boxes[:, :3] + boxes[:, 3:] / 2
    inv = np.linalg.inv(np.asarray(affine_ras, dtype=np.float64))
    flip = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS
    corners = []
    for pick in np.ndindex(2, 2, 2):  # all 8 corners, so oblique grids get the enclosing box
        point = np.where(np.asarray(pick) == 0, lo, hi) * flip
        corners.append(np.concatenate([point, np.ones((len(point), 1))], axis=1) @ inv.T)
    stacked = np.stack(corners)[..., :3]
    return np.concatenate([stacked.min(axis=0), stacked.max(axis=0)], axis=1)


def draw_boxes(shape: Sequence[int], voxel_boxes: np.ndarray) -> np.ndarray:
    """A ``uint8`` volume with the outline of each box drawn with its rank (1 = best score, capped at 255)."""
    vol = np.zeros(tuple(int(s) for s in shape), dtype=np.uint8)
    for rank, box in reversed(list(enumerate(np.asarray(voxel_boxes).reshape(-1, 6), start=1))):
        lo = np.clip(np.floor(box[:3]).astype(int), 0, np.asarray(shape) - 1)
        hi = np.clip(np.ceil(box[3:]).astype(int), 0, np.asarray(shape) - 1)
        value = min(rank, 255)
        sl = tuple(slice(lo[i], hi[i] + 1) for i in range(3))
        region = vol[sl]
        shell = np.zeros(region.shape, bool)
        for axis in range(3):
            idx = [slice(None)] * 3
            idx[axis] = [0, -1]
            shell[tuple(idx)] = True
        region[shell] = value
    return vol


class DetectionWriter:
    """Ignite handler writing one JSON of world-space detections per scan (and optionally a NIfTI of boxes).

    It reads the per-scan outputs of ``DetectionEvaluator`` after postprocessing (``pred_box`` world LPS
    ``cccwhd``, ``pred_score``, ``pred_malignancy``, and ``image`` whose meta holds the input file name, its
    original RAS affine and spatial shape).

    Args:
        output_dir: destination folder.
        score_threshold: detections scoring below are not written.
        save_box_image: also write ``<scan>_boxes.nii.gz`` on the input's grid with the outlines of the
            detections scoring at least ``box_image_threshold`` (value = rank by score).
        box_image_threshold: see ``save_box_image``.
        output_transform: maps ``engine.state.output`` to the list of per-scan dicts.
        output_format: ``json`` (the JSON), ``dicom`` (a DICOM SR for a DICOM series; other inputs get the
            JSON) or ``both``.
        bundle_root: the bundle (its name and version identify the algorithm in the SR); needed for DICOM.
        dicom_min_score: detections reported in the SR score at least this (the JSON keeps every detection).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        score_threshold: float = 0.0,
        save_box_image: bool = False,
        box_image_threshold: float = 0.5,
        output_transform: Callable = lambda x: x,
        output_format: str = "json",
        bundle_root: str | os.PathLike = ".",
        dicom_min_score: float = 0.5,
    ) -> None:
        from common.io.dicom_results import bundle_identity, check_output_format

        self.output_format = check_output_format(output_format, "json")
        self.bundle, self.version = bundle_identity(bundle_root)
        self.dicom_min_score = dicom_min_score
        self.output_dir = Path(output_dir)
        self.score_threshold = score_threshold
        self.save_box_image = save_box_image
        self.box_image_threshold = box_image_threshold
        self.output_transform = output_transform
        self._names = UniqueNames()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        outputs = self.output_transform(engine.state.output)
        for out in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
            self.write(out)

    def write(self, out: dict[str, Any]) -> Path:
        """Write the JSON (and NIfTI) of one scan; returns the JSON path."""
        meta = getattr(out.get("image"), "meta", {}) or {}
        filename = meta.get("filename_or_obj", "scan")
        name = self._names(scan_name(filename), str(filename))  # a second scan of the same name gets _2
        detections = detections_to_json(
            out.get("pred_box"), out.get("pred_score"), out.get("pred_malignancy"), self.score_threshold
        )
        # a DICOM series' headers, read once: its UIDs for the JSON and the SR's source
        sources = self._series(Path(str(filename)), str(meta.get("ct_series_uid", ""))) if (
            meta.get("ct_format") == "dicom") else None
        doc = {
            "image": Path(str(filename)).name,
            **({"StudyInstanceUID": str(sources[0].StudyInstanceUID),
                "SeriesInstanceUID": str(sources[0].SeriesInstanceUID)} if sources else {}),
            "coordinate_system": "LPS",
            "units": "mm",
            "box_mode": "cccwhd",
            "box_mode_description": "center x, y, z and size along x, y, z, world millimetres (LPS, as LUNA16)",
            "num_detections": len(detections),
            "detections": detections,
        }
        path = self.output_dir / f"{name}_nodules.json"
        sr = None
        if self.output_format != "json" and sources:
            sr = self._write_sr(name, Path(str(filename)), sources, detections)
        # with output_format dicom the SR replaces the JSON, unless the series made no valid SR
        if self.output_format != "dicom" or sr is None:
            atomic_write_json(path, doc)
            logger.info("%s: %d detections -> %s", Path(str(filename)).name, len(detections), path.name)
        if self.save_box_image:
            self._write_box_image(
                name, meta, [d for d in detections if d["score"] >= self.box_image_threshold]
            )
        return path

    @staticmethod
    def _series(source: Path, series_uid: str) -> list[Any] | None:
        """The headers of the series a CT was read from; None (logged) when they cannot be read back."""
        from common.io.dicom_results import series_headers

        try:
            return series_headers(source if source.is_dir() else source.parent, series_uid)
        except Exception as e:  # the detections stand without the UIDs and the SR
            logger.error("%s: the series' headers could not be read back (%s)", source, type(e).__name__)
            return None

    def _write_sr(self, name: str, source: Path, sources: list[Any], detections: list[dict[str, Any]]) -> Path | None:
        """The detections scoring at least ``dicom_min_score`` as a TID 1500 SR referencing the series; None when
        the series makes no valid SR (logged; the JSON is written instead)."""
        from common.io.dicom_results import nodule_report, write_result

        nodules = [
            {"center_lps_mm": d["center"], "diameter_mm": max(d["size"]), "score": d["score"],
             "malignancy": d.get("malignancy", {}).get("rating"),
             "malignancy_probability": sum(d["malignancy"]["probabilities"][3:]) if "malignancy" in d else None}
            for d in detections if d["score"] >= self.dicom_min_score
        ]
        path = write_result(lambda: nodule_report(nodules, sources, self.bundle, self.version),
                            self.output_dir / f"{name}_nodules_sr.dcm", source, "DICOM SR")
        if path is not None:
            logger.info("%s: %d nodules (score >= %g) -> %s", source.name, len(nodules), self.dicom_min_score,
                        path.name)
        return path

    def _write_box_image(self, name: str, meta: dict[str, Any], detections: list[dict[str, Any]]) -> None:
        import nibabel as nib

        affine = np.asarray(meta.get("original_affine", meta.get("affine")), dtype=np.float64)
        shape = np.asarray(meta.get("spatial_shape")).astype(int).tolist()
        boxes = np.array([d["center"] + d["size"] for d in detections]).reshape(-1, 6)
        vol = draw_boxes(shape, world_lps_to_voxel(boxes, affine))
        with atomic_path(self.output_dir / f"{name}_boxes.nii.gz") as tmp:
            nib.save(nib.Nifti1Image(vol, affine), str(tmp))
