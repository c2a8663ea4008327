"""Results as DICOM objects that a PACS stores and a viewer shows beside the scan (written with highdicom).

* :func:`lung_segmentation`: a DICOM Segmentation (binary; segment 1 right lung, 2 left lung, SNOMED CT
  codes; algorithm identification with the bundle's name and version) on the frames of the source CT series.
* :func:`nodule_report`: a TID 1500 Imaging Measurement Report (Comprehensive 3D SR): per nodule one volumetric
  measurement group with its centre as a 3D point (SCOORD3D, patient coordinates), the long-axis diameter in
  mm, the detection score and the malignancy rating (LIDC's 1-5) with its probability.
* :func:`classification_report`: a TID 1500 report on one image (a chest film, an OCT B-scan): the predicted
  finding, each class probability and the decision (referral or risk category), referencing the image.
* :func:`image_header`, :func:`image_uids`: a DICOM input's header (read once) and its Study, Series and SOP
  Instance UIDs, for CSV and JSON results; :func:`write_result`: build, write or log one object.

Concepts without a standard code (the bundles' class names, the detection score, the LIDC rating) use the
private coding scheme ``99ZOO`` (DICOM reserves ``99`` prefixes for local schemes), with the meaning spelled
out. The objects copy the patient and study of their source, as DICOM requires; nothing of them is logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputDataError

logger = logging.getLogger(__name__)

MANUFACTURER = "chest-eye-bundle-zoo"
ZOO_SCHEME = "99ZOO"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _code(value: str, scheme: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def zoo_code(value: str, meaning: str | None = None) -> Any:
    """A concept of the zoo's private coding scheme (``99ZOO``)."""
    return _code(value, ZOO_SCHEME, meaning or value)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Build objects without warnings that quote header values: highdicom's checks of person names and pydicom's
    value validation print the value (a patient's name) to stderr, past the log redaction."""
    from common.io.dicom import quiet_value_validation

    with warnings.catch_warnings(), quiet_value_validation():
        warnings.simplefilter("ignore", UserWarning)
        yield


RIGHT_LUNG = ("3341006", "SCT", "Right lung")
LEFT_LUNG = ("44029006", "SCT", "Left lung")
UNITLESS = ("1", "UCUM", "no units")
MILLIMETRE = ("mm", "UCUM", "millimeter")


# attributes a derived object copies from its source, which DICOM requires present (empty allowed): sources
# written by tools that leave them out (anonymisers, test files) get them empty in the copy read here
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _completed(header: Any) -> Any:
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def image_header(path: str | os.PathLike) -> Any | None:
    """The header (no pixel data) of a DICOM image file, ready to be the source of a derived object; None for a
    file that is not DICOM. Read once per image: its UIDs (:func:`image_uids`) and its SR come from it."""
    from common.io.dicom import _read_header  # remembers the identifiers, so later log lines are redacted

    with _quiet():
        header = _read_header(Path(path))
    return None if header is None else _completed(header)


def image_uids(header: Any | None) -> dict[str, str]:
    """``StudyInstanceUID``, ``SeriesInstanceUID`` and ``SOPInstanceUID`` of a header, for CSV and JSON results
    (empty for None: an input that is not DICOM)."""
    if header is None:
        return {}
    uids = {k: str(header.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    return {k: v for k, v in uids.items() if v}


def series_headers(folder: str | os.PathLike, series_uid: str) -> list[Any]:
    """The headers of the image files of one series under ``folder`` (searched recursively)."""
    from common.io.dicom import _collect

    series = _collect(Path(folder))
    if series_uid not in series:
        raise InputDataError(folder, f"no series with SeriesInstanceUID {series_uid} (it was read a moment ago)")
    return [_completed(header) for _, header in series[series_uid]]


def write_result(build: Callable[[], Any], path: Path, source: str | os.PathLike, what: str) -> Path | None:
    """Build a DICOM result and write it to ``path``; a source that makes no valid object is logged, not raised.

    Every writer of the bundles goes through here: the case's other results (NIfTI, JSON, CSV row, PNG) stand,
    and the batch goes on.

    Args:
        build: makes the object (a SEG, SR or Secondary Capture).
        path: where it goes.
        source: the input it is made from (named in the log line).
        what: the object's kind, for the log line ("DICOM SEG").

    Returns:
        ``path``, or None when the object could not be made.
    """
    try:
        dataset = build()
    except Exception as e:
        logger.error("%s: no %s written (%s: %s)", source, what, type(e).__name__, e)
        return None
    return save_dataset(dataset, path)


def _algorithm(name: str, version: str) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(name=name, family=codes.cid7162.ArtificialIntelligence, version=version)


def lung_segmentation(
    labels: np.ndarray, affine_ras: np.ndarray, sources: Sequence[Any], bundle: str, version: str,
    series_number: int = 901,
) -> Any:
    """A DICOM Segmentation of the right (label 1) and left (label 2) lung on the source series' frames.

    Args:
        labels: ``(X, Y, Z)`` label map on the grid of the series as :func:`common.io.dicom.read_dicom_series`
            read it (voxel ``[i, j, k]``: column i, row j of slice k).
        affine_ras: that grid's voxel-to-world affine (RAS, mm).
        sources: the series' headers (:func:`series_headers`), single-frame images.
        bundle: the bundle's name (algorithm name, manufacturer's model name).
        version: the bundle's version.
        series_number: the new series' number.

    Returns:
        the ``highdicom.seg.Segmentation`` (save it with ``.save_as``).

    Raises:
        InputDataError: a source image lies off the label map's grid (another series, or a multi-frame file).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    to_voxel = np.linalg.inv(RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64))
    order = []
    for ds in sources:
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise InputDataError(ds.filename, "DICOM SEG output supports single-frame CT series only")
        ijk = to_voxel @ np.append(np.asarray(ds.ImagePositionPatient, dtype=np.float64), 1.0)
        k = int(round(ijk[2]))
        if not (abs(ijk[2] - k) < 0.05 and 0 <= k < labels.shape[2] and np.allclose(ijk[:2], 0, atol=0.05)):
            raise InputDataError(ds.filename, "this slice lies off the grid of the segmented volume")
        order.append(k)
    # frame of source image n: slice order[n] of the label map, rows j and columns i
    frames = np.stack([labels[:, :, k].T for k in order]).astype(np.uint8)
    algorithm = _algorithm(bundle, version)
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=meaning,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=_code(*code), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id=f"{meaning} ({bundle})",
        )
        for number, code, meaning in ((1, RIGHT_LUNG, "Right lung"), (2, LEFT_LUNG, "Left lung"))
    ]
    with _quiet():
        return hd.seg.Segmentation(
            source_images=list(sources), pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=bundle,
            software_versions=version, device_serial_number="none", series_description=f"Lungs ({bundle} {version})",
        )


def _orientation(source: Any) -> tuple[str, str] | None:
    """The source image's PatientOrientation when it has a valid one (the overlay has the same rows and columns)."""
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) and set(str(v)) <= set("LRAPHF") for v in value):
        return str(value[0]), str(value[1])
    return None


def overlay_capture(source: Any, rgb: np.ndarray, bundle: str, version: str, description: str,
                    series_number: int = 904, note: str = "") -> Any:
    """An explanation overlay (RGB, the film's size) as a DICOM Secondary Capture in the source's study.

    Args:
        source: the image's header.
        rgb: ``(H, W, 3)`` uint8 picture (``common.interpret.save_overlay``'s).
        bundle: the bundle's name.
        version: the bundle's version.
        description: the series description (method, class and probability).
        series_number: the new series' number.
        note: added to the ImageComments, e.g. that the picture is not in the source's geometry.

    Returns:
        the ``highdicom.sc.SCImage``.

    Raises:
        ValueError: the source has no valid PatientOrientation, which a capture in patient coordinates repeats
            (it is not guessed).
    """
    import highdicom as hd

    if _orientation(source) is None:
        raise ValueError("the source image has no PatientOrientation, which the Secondary Capture must state")
    with _quiet():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8), photometric_interpretation="RGB",
            bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
            patient_orientation=_orientation(source),
        )
    if "Laterality" not in sc:  # Type 2C (paired body parts): the source's, empty when it gives none
        sc.Laterality = source.get("Laterality", "") or ""
    sc.SeriesDescription = f"{description} ({bundle} {version})"[:64]
    sc.ImageComments = "Explanation overlay, not for diagnosis: where the model looked" + (f"; {note}" if note else "")
    return sc


def _observation_context(bundle: str, version: str) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(), name=bundle, manufacturer_name=MANUFACTURER, model_name=f"{bundle} {version}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                                      observer_identifying_attributes=device)
    )


def _sr(evidence: Sequence[Any], report: Any, bundle: str, version: str, series_number: int, title: str) -> Any:
    import highdicom as hd

    with _quiet():
        return hd.sr.Comprehensive3DSR(
            evidence=list(evidence), content=report, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
            series_description=f"{title} ({bundle} {version})",
        )


def nodule_report(
    nodules: Sequence[Mapping[str, Any]], sources: Sequence[Any], bundle: str, version: str, series_number: int = 902,
) -> Any:
    """A TID 1500 measurement report of detected nodules on one CT series.

    Args:
        nodules: per nodule ``center_lps_mm`` (x, y, z), ``diameter_mm`` (long axis), ``score`` (0-1), and
            optionally ``malignancy`` (the rating 1-5) and ``malignancy_probability``.
        sources: the series' headers (evidence; their frame of reference is the points').
        bundle: the bundle's name.
        version: the bundle's version.
        series_number: the new series' number.

    Returns:
        the ``highdicom.sr.Comprehensive3DSR``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    frame_of_reference = str(sources[0].FrameOfReferenceUID)
    algorithm = hd.sr.AlgorithmIdentification(name=bundle, version=version)
    groups = []
    for n, nodule in enumerate(nodules, start=1):
        measurements = [
            hd.sr.Measurement(name=codes.SCT.Diameter, value=float(nodule["diameter_mm"]), unit=_code(*MILLIMETRE),
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=zoo_code("DETSCORE", "Detection score"), value=float(nodule["score"]),
                              unit=_code(*UNITLESS), algorithm_id=algorithm),
        ]
        if nodule.get("malignancy") is not None:
            measurements.append(hd.sr.Measurement(
                name=zoo_code("LIDCMAL", "Malignancy rating (LIDC 1-5)"), value=float(nodule["malignancy"]),
                unit=_code(*UNITLESS), algorithm_id=algorithm))
        if nodule.get("malignancy_probability") is not None:
            measurements.append(hd.sr.Measurement(
                name=zoo_code("PMALIG", "Probability of malignancy (rating 4-5)"),
                value=float(nodule["malignancy_probability"]), unit=_code(*UNITLESS), algorithm_id=algorithm))
        point = hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.asarray([nodule["center_lps_mm"]], dtype=np.float64),
            frame_of_reference_uid=frame_of_reference,
            source_series=hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID)),
        )
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"nodule {n}"),
            referenced_volume_surface=point, finding_type=codes.SCT.Nodule, algorithm_id=algorithm,
            measurements=measurements,
        ))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(bundle, version),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups,
    )
    return _sr(sources, report, bundle, version, series_number, "Lung nodules")


def classification_report(
    source: Any, probabilities: Mapping[str, float], predicted: str | None, bundle: str, version: str,
    decisions: Mapping[str, str] | None = None, series_number: int = 903,
) -> Any:
    """A TID 1500 measurement report of one image's classification.

    Args:
        source: the image's header.
        probabilities: class name -> probability (the model's calibrated output).
        predicted: the predicted class (the finding); None for a model that gives risks only.
        bundle: the bundle's name.
        version: the bundle's version.
        decisions: the bundle's decisions, question -> answer (e.g. ``{"pneumonia": "yes"}``,
            ``{"referral": "urgent"}``).
        series_number: the new series' number.

    Returns:
        the ``highdicom.sr.Comprehensive3DSR``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.sr.AlgorithmIdentification(name=bundle, version=version)
    measurements = [
        hd.sr.Measurement(name=zoo_code(f"P-{name}", f"Probability of {name}"), value=float(p),
                          unit=_code(*UNITLESS), algorithm_id=algorithm)
        for name, p in probabilities.items()
    ]
    evaluations = [hd.sr.QualitativeEvaluation(name=codes.SCT.Finding, value=zoo_code(predicted))] if predicted else []
    for question, answer in (decisions or {}).items():
        evaluations.append(hd.sr.QualitativeEvaluation(name=zoo_code(question.upper(), question), value=zoo_code(str(answer))))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{bundle} result"),
        algorithm_id=algorithm, measurements=measurements, qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(bundle, version),
        procedure_reported=zoo_code(bundle, f"Automated analysis ({bundle})"), imaging_measurements=[group],
    )
    return _sr([source], report, bundle, version, series_number, "Classification")


OUTPUT_FORMATS = ("dicom", "both")


def check_output_format(output_format: str, files_kind: str) -> str:
    """``output_format`` of a bundle: its own result files (``files_kind``: nifti, json or csv), ``dicom`` (SEG/SR
    for DICOM inputs; other inputs still get the files) or ``both``."""
    allowed = (files_kind, *OUTPUT_FORMATS)
    if output_format not in allowed:
        raise ValueError(f"output_format {output_format!r}: choose one of {', '.join(allowed)}")
    return output_format


def bundle_identity(bundle_root: str | os.PathLike) -> tuple[str, str]:
    """The bundle's name and version from its ``configs/metadata.json`` (for the DICOM objects' algorithm
    identification); the folder's name and "unknown" when there is none."""
    import json

    root = Path(bundle_root)
    try:
        meta = json.loads((root / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    name = root.resolve().name
    return name, str(meta.get("version", "unknown"))


def save_dataset(dataset: Any, path: Path) -> Path:
    """Write a DICOM object atomically (temporary name, then rename)."""
    from common.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        dataset.save_as(str(tmp), enforce_file_format=True)
    return path
