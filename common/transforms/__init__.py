"""MONAI dictionary transforms shared by the bundles (``_target_: common.transforms.<Name>``).

CT (:mod:`common.transforms.ct`, :mod:`common.transforms.body`): ``LoadCTd``, ``LoadLabelVolumed``,
``HUWindowd``, ``BodyMaskd``.
Radiographs (:mod:`common.transforms.radiograph`): ``LoadRadiographd``, ``LetterboxResized``; acquisition shift
(:mod:`common.transforms.acquisition`): ``RandJPEGd``, ``AcquisitionShiftd``.
OCT (:mod:`common.transforms.oct`): ``LoadOCTd``, ``OCTRetinaBandd``, ``OCTNormalized``.
EHR (:mod:`common.transforms.ehr`): ``FeatureSpec``, ``EHRVectord``, ``read_ehr_csv``.

Orientation and resampling use MONAI's own ``Orientationd(axcodes="RAS")`` and ``Spacingd``.
Every loader raises :class:`common.errors.InputDataError` naming the file for input it cannot use.
"""

from common.transforms.acquisition import SHIFTS, AcquisitionShiftd, RandJPEGd, acquisition_shift
from common.transforms.body import BodyMaskd, body_mask
from common.transforms.ct import (
    HUWindowd,
    LoadCTd,
    LoadLabelVolumed,
    check_hu_values,
    load_ct,
    load_label_volume,
)
from common.transforms.ehr import EHRVectord, Feature, FeatureSpec, parse_value, read_ehr_csv
from common.transforms.oct import LoadOCTd, OCTNormalized, OCTRetinaBandd, fit_rpe_curve, load_oct
from common.transforms.radiograph import (
    LetterboxResized,
    LoadRadiographd,
    letterbox_to_original,
    load_radiograph,
)

__all__ = [
    "SHIFTS",
    "AcquisitionShiftd",
    "RandJPEGd",
    "acquisition_shift",
    "BodyMaskd",
    "EHRVectord",
    "Feature",
    "FeatureSpec",
    "HUWindowd",
    "LetterboxResized",
    "LoadCTd",
    "LoadLabelVolumed",
    "LoadOCTd",
    "LoadRadiographd",
    "OCTNormalized",
    "OCTRetinaBandd",
    "fit_rpe_curve",
    "body_mask",
    "check_hu_values",
    "letterbox_to_original",
    "load_ct",
    "load_label_volume",
    "load_oct",
    "load_radiograph",
    "parse_value",
    "read_ehr_csv",
]
