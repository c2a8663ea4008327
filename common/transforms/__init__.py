"""MONAI dictionary transforms shared by the bundles (``_target_: common.transforms.<Name>``).

CT (:mod:`common.transforms.ct`): ``LoadCTd``, ``LoadLabelVolumed``, ``HUWindowd``.
Radiographs (:mod:`common.transforms.radiograph`): ``LoadRadiographd``, ``LetterboxResized``.
OCT (:mod:`common.transforms.oct`): ``LoadOCTd``, ``OCTNormalized``.
EHR (:mod:`common.transforms.ehr`): ``FeatureSpec``, ``EHRVectord``, ``read_ehr_csv``.

Orientation and resampling use MONAI's own ``Orientationd(axcodes="RAS")`` and ``Spacingd``.
"""

from common.transforms.ct import (
    HUWindowd,
    LoadCTd,
    LoadLabelVolumed,
    check_hu_values,
    load_ct,
    load_label_volume,
)

__all__ = [
    "HUWindowd",
    "LoadCTd",
    "LoadLabelVolumed",
    "check_hu_values",
    "load_ct",
    "load_label_volume",
]
