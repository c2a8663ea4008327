"""Shared code of the chest and eye bundle zoo.

Sub-packages:
    transforms:  MONAI dictionary transforms (CT, radiographs, OCT, EHR), referenced from bundle configs.
    io:          readers and writers (DICOM series, MHD/RAW, atomic writes).
    data:        datalist builders for the public layouts (decathlon, LUNA16, Kermany, EHR CSV).
    synthetic:   seeded generators of synthetic data sets in the public layouts.
    export:      ONNX export with a parity check, and an ONNX Runtime network for MONAI inferers.
    metrics:     FROC/CPM, AUROC with bootstrap confidence intervals, calibration, Kermany's weighted error.
    segmentation, detection, classification, oxygen: task code shared by the bundle configs.
"""

__version__ = "0.1.0"

# Patient identifiers must never reach a log: redact them from every log record of any process that
# uses this package (bundle configs always do). See common.logging_utils.
from common.logging_utils import install_phi_redaction as _install_phi_redaction  # noqa: E402

_install_phi_redaction()

# An uncaught error about the user's data ends a bundle run with one line, not a traceback (exit status 1).
from common.errors import install_input_error_hook as _install_input_error_hook  # noqa: E402

_install_input_error_hook()
