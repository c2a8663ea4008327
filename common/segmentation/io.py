"""Inputs and outputs of lung segmentation: listing the cases of a folder, writing label maps.

:func:`inference_datalist` accepts what a user points the bundle at: a folder of NIfTI/MHD volumes and
DICOM series folders, one such file or folder, or a datalist JSON (MSD/decathlon style).
:class:`SaveLabelMapd` writes each label map as NIfTI with the affine of the image it was computed
from, to a temporary name that is renamed when complete.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.data.ct_inputs import ct_cases
from common.errors import InputDataError
from common.io.atomic import atomic_path
from common.io.naming import UniqueNames
from common.segmentation.report import case_name

logger = logging.getLogger(__name__)



def list_ct_inputs(folder: str | os.PathLike) -> list[str]:
    """CT inputs in ``folder``, found by content (:func:`common.data.ct_inputs.ct_cases`): the volume files in
    it, and the folders holding DICOM at any depth (a PACS export: study / series / files). Volume files in
    sub-folders are not cases: an MSD folder keeps its label maps there."""
    here = ct_cases(folder, recursive=False)
    series = [c for c in ct_cases(folder, recursive=True) if Path(c).is_dir()]
    return sorted(set(here) | set(series))


def inference_datalist(dataset_dir: str | os.PathLike, datalist: str = "", key: str = "testing") -> list[dict]:
    """The ``[{"image": path}, ...]`` list a batch inference runs on.

    Args:
        dataset_dir: a folder of cases (NIfTI, MHD, DICOM series folders), one case (file or DICOM
            folder), or a datalist JSON file.
        datalist: a datalist JSON (MSD/decathlon style, or a plain list) to use instead of listing
            ``dataset_dir``; relative paths in it are relative to the JSON's folder.
        key: the datalist's list to read (``testing``, ``validation``, ``training``).

    Raises:
        InputDataError: nothing usable is found.
    """
    source = Path(datalist) if datalist else Path(dataset_dir)
    if not source.exists():
        raise InputDataError(source, "does not exist")
    if source.is_file() and source.suffix.lower() == ".json":
        with open(source) as f:
            content = json.load(f)
        items = content if isinstance(content, list) else content.get(key)
        if items is None:
            raise InputDataError(source, f"datalist has no {key!r} list")
        base = source.parent
        cases = []
        for item in items:
            image = item["image"] if isinstance(item, dict) else item
            cases.append({"image": str(image if os.path.isabs(image) else base / image)})
    elif source.is_file():
        cases = [{"image": str(source)}]
    else:
        cases = [{"image": p} for p in list_ct_inputs(source)]
    if not cases:
        raise InputDataError(source, "no CT volumes found (expected .nii/.nii.gz/.mhd files or DICOM series folders)")
    return cases


class SaveLabelMapd(MapTransform):
    """Write label maps as NIfTI (uint8) with the affine they carry, atomically.

    The file is ``<output_dir>/<case><postfix><ext>``, the case name taken from the image's
    ``filename_or_obj`` (file name without suffixes, or the DICOM folder's name). With ``data_root_dir``
    the input's sub-folders below it are kept, so cases with the same name in different folders do not
    overwrite each other; inputs that would still share a name get ``_2``, ``_3``, ... and a warning.

    Args:
        keys: label map keys: ``(1, X, Y, Z)`` MetaTensors on the input's grid.
        output_dir: output folder.
        output_postfix: appended to the case name.
        output_ext: ``.nii.gz`` or ``.nii``.
        data_root_dir: optional input root whose relative folder structure is mirrored.
        meta_key: key whose meta holds ``filename_or_obj`` (defaults to the label map's own meta).
        output_format: ``nifti`` or ``both`` write the NIfTI; ``dicom`` writes it only for cases that got no
            DICOM SEG from :class:`SaveLungSegDicomd` (which runs first): inputs that are not DICOM, and a series
            whose SEG could not be made.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        output_postfix: str = "_seg",
        output_ext: str = ".nii.gz",
        data_root_dir: str | os.PathLike = "",
        meta_key: str | None = None,
        output_format: str = "nifti",
        allow_missing_keys: bool = False,
    ) -> None:
        from common.io.dicom_results import check_output_format

        super().__init__(keys, allow_missing_keys)
        self.output_format = check_output_format(output_format, "nifti")
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.output_ext = output_ext
        self.data_root_dir = Path(data_root_dir) if data_root_dir else None
        self.meta_key = meta_key
        self._names = UniqueNames()

    def output_path(self, source: str) -> Path:
        """Where the label map of the image ``source`` is written (unique within this run: a second input
        with the same case name, such as ``lung_002.nii.gz`` beside a ``lung_002/`` DICOM folder, gets
        ``lung_002_2``, and a warning)."""
        folder = self.output_dir
        if self.data_root_dir is not None:
            try:
                folder = folder / Path(source).resolve().parent.relative_to(self.data_root_dir.resolve())
            except ValueError:
                pass
        stem = self._names(str(folder / case_name(source)), source)
        return Path(f"{stem}{self.output_postfix}{self.output_ext}")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            if not isinstance(label, MetaTensor):
                raise TypeError(f"{key!r} must be a MetaTensor carrying the affine to write")
            meta_src = d[self.meta_key] if self.meta_key else label
            source = str(meta_src.meta.get("filename_or_obj", "case"))
            if self.output_format == "dicom" and label.meta.get("saved_dicom_to"):
                continue  # its result is the DICOM SEG (a series that made no valid SEG still gets its NIfTI)
            array = label.as_tensor().detach().cpu().numpy()
            array = array[0] if array.ndim == 4 else array
            affine = np.asarray(label.affine, dtype=np.float64)
            image = nib.Nifti1Image(array.astype(np.uint8, copy=False), affine)
            image.set_qform(affine, code=1)
            image.set_sform(affine, code=1)
            image.header.set_xyzt_units("mm")
            path = self.output_path(source)
            with atomic_path(path) as tmp:
                nib.save(image, str(tmp))
            label.meta["saved_to"] = str(path)
            logger.info("wrote %s", path)
        return d


class SaveLungSegDicomd(MapTransform):
    """Write the lung label map of a DICOM CT series as a DICOM Segmentation referencing that series.

    The SEG (``common.io.dicom_results.lung_segmentation``: segment 1 right lung, 2 left lung) goes to
    ``<output_dir>/<case><postfix>.dcm``, named as :class:`SaveLabelMapd` names the NIfTI. Inputs that are not
    DICOM are passed over (they have no series to reference), as is everything when ``output_format`` is
    ``nifti``.

    Args:
        keys: label map keys: ``(1, X, Y, Z)`` on the input's grid (``ResampleToInputGridd``'s output).
        output_dir: output folder.
        bundle_root: the bundle (its name and version identify the algorithm in the SEG).
        output_format: ``nifti``, ``dicom`` or ``both``.
        meta_key: key whose meta tells the input (``filename_or_obj``, ``ct_format``, ``ct_series_uid``).
        output_postfix: appended to the case name.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        bundle_root: str | os.PathLike,
        output_format: str = "both",
        meta_key: str = "image",
        output_postfix: str = "_seg",
        allow_missing_keys: bool = False,
    ) -> None:
        from common.io.dicom_results import bundle_identity, check_output_format

        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_format = check_output_format(output_format, "nifti")
        self.bundle, self.version = bundle_identity(bundle_root)
        self.meta_key = meta_key
        self.output_postfix = output_postfix
        self._names = UniqueNames()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        from common.io.dicom_results import lung_segmentation, series_headers, write_result

        d = dict(data)
        meta = getattr(d.get(self.meta_key), "meta", {}) or {}
        if self.output_format == "nifti" or meta.get("ct_format") != "dicom":
            return d
        source = Path(str(meta.get("filename_or_obj", "")))
        folder = source if source.is_dir() else source.parent
        for key in self.key_iterator(d):
            label = d[key]
            array = label.as_tensor().detach().cpu().numpy()
            array = (array[0] if array.ndim == 4 else array).astype(np.uint8)
            stem = self._names(str(self.output_dir / case_name(str(source))), str(source))
            # a series that makes no valid SEG is logged, and SaveLabelMapd writes its NIfTI instead
            path = write_result(
                lambda labels=array, affine=np.asarray(label.affine): lung_segmentation(
                    labels, affine, series_headers(folder, str(meta.get("ct_series_uid", ""))), self.bundle,
                    self.version),
                Path(f"{stem}{self.output_postfix}.dcm"), source, "DICOM SEG")
            if path is not None:
                label.meta["saved_dicom_to"] = str(path)
                logger.info("wrote %s (DICOM SEG)", path)
        return d

