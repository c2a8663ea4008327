"""DICOM in, DICOM out: every bundle's shipped weights on DICOM inputs write SEG / SR objects that validate.

* lung_ct_segmentation: a DICOM Segmentation on the source series' frames, equal to the NIfTI mask, with the
  right and left lung as SNOMED-coded segments; ``output_format`` chooses NIfTI, DICOM or both.
* lung_nodule_ct_detection: a TID 1500 SR of the nodules, referencing the series; the JSON carries the UIDs.
* the classifiers and the oxygen bundle: an SR per DICOM image (finding, probabilities, decisions or risks),
  referencing the image; the CSV / JSON rows carry the image's UIDs.

Every object is checked with dicom3tools' ``dciodvfy`` (the Debian package ``.ci/run`` installs) and read back
with pydicom and highdicom.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import bundle_runner
import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import write_radiograph

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"


def assert_valid_dicom(path: Path) -> None:
    """``dciodvfy`` finds no error in ``path`` (skipped, with the reason, where dicom3tools is not installed)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], f"{path.name}:\n" + "\n".join(errors)


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> Path:
    """A synthetic chest CT phantom written as a DICOM series (5 mm slices), alone in its folder."""
    from common.synthetic.ct_phantom import generate_lung_ct

    root = tmp_path_factory.mktemp("ct")
    generate_lung_ct(root / "set", {"num_train": 0, "num_val": 0, "num_test": 1, "write_mhd": False,
                                    "dicom_cases": "test", "phantom": {"matrix": 128, "slice_spacing_mm": [5.0, 5.0],
                                                                       "table": True}}, seed=2)
    series = sorted((root / "set" / "dicom").iterdir())[0]
    scans = root / "scans"
    shutil.copytree(series, scans / series.name)
    return scans


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> Path:
    """A DICOM chest film, a DICOM OCT B-scan and a PNG in one folder (each classifier refuses the other's
    DICOM modality and lists it with its error)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("films")
    yy, xx = np.mgrid[0:320, 0:280]
    write_radiograph(folder / "film_dicom.dcm", (1800 + 900 * np.sin(xx / 21.0) * np.cos(yy / 17.0)).astype(np.uint16))
    film = pydicom.dcmread(folder / "film_dicom.dcm")
    film.PatientOrientation = ["L", "F"]  # a PA chest film as displayed
    film.save_as(folder / "film_dicom.dcm")
    write_radiograph(folder / "oct_dicom.dcm", (900 + 600 * np.cos(yy / 9.0)).astype(np.uint16), modality="OT")
    Image.fromarray((120 + 80 * np.sin(xx / 13.0)).astype(np.uint8)).save(folder / "film_png.png")
    return folder


def _source_headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.rglob("*")) if p.is_file()]


def test_lung_seg_is_valid_and_equals_the_nifti_mask(ct_series, tmp_path):
    bundle = BUNDLES / "lung_ct_segmentation"
    out = tmp_path / "out"
    bundle_runner.run_workflow(bundle, ["inference.yaml"], "infer", dataset_dir=str(ct_series), output_dir=str(out))
    seg_path = next(out.glob("*_seg.dcm"))
    assert_valid_dicom(seg_path)
    seg = hd.seg.segread(seg_path)
    sources = _source_headers(ct_series)
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    described = {s.SegmentNumber: s for s in seg.SegmentSequence}
    assert described[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "3341006"  # right lung
    assert described[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "44029006"  # left lung
    assert described[1].SegmentAlgorithmName == "lung_ct_segmentation"

    # frame by frame: the SEG's right/left lung on each source slice equals the NIfTI mask's
    nifti = nib.load(next(out.glob("*_seg.nii.gz")))
    mask = np.asarray(nifti.dataobj)
    to_voxel = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ nifti.affine)  # LPS world -> voxel
    uids = [ds.SOPInstanceUID for ds in sources]
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2],
                                               combine_segments=True, relabel=True, assert_missing_frames_are_empty=True)
    assert (mask > 0).sum() > 1000, "the phantom's lungs were not segmented"
    for ds, frame in zip(sources, labels):
        k = int(round((to_voxel @ np.append(np.asarray(ds.ImagePositionPatient, float), 1.0))[2]))
        np.testing.assert_array_equal(frame, mask[:, :, k].T)


def test_lung_output_format_chooses_the_files(ct_series, tmp_path):
    bundle = BUNDLES / "lung_ct_segmentation"
    for fmt, suffixes in (("nifti", {".gz"}), ("dicom", {".dcm"})):
        out = tmp_path / fmt
        bundle_runner.run_workflow(bundle, ["inference.yaml"], "infer", dataset_dir=str(ct_series),
                                   output_dir=str(out), output_format=fmt)
        assert {p.suffix for p in out.iterdir()} == suffixes, fmt


def test_nodule_sr_references_the_series_and_reports_each_nodule(ct_series, tmp_path):
    bundle = BUNDLES / "lung_nodule_ct_detection"
    out = tmp_path / "out"
    bundle_runner.run_workflow(bundle, ["inference.yaml"], "infer", dataset_dir=str(ct_series), output_dir=str(out),
                               test_time_flips=False, dicom_min_score=0.0)
    sources = _source_headers(ct_series)
    found = json.loads(next(out.glob("*_nodules.json")).read_text())
    assert found["SeriesInstanceUID"] == sources[0].SeriesInstanceUID
    sr_path = next(out.glob("*_nodules_sr.dcm"))
    assert_valid_dicom(sr_path)
    sr = hd.sr.srread(sr_path)
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == sources[0].StudyInstanceUID
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == found["num_detections"] > 0
    first = found["detections"][0]
    diameter = next(m for m in groups[0].get_measurements() if m.name.meaning == "Diameter")
    assert diameter.value == pytest.approx(max(first["size"]), abs=1e-3)
    assert np.allclose(groups[0].roi.graphic_data, [first["center"]], atol=1e-3)


@pytest.mark.parametrize("name,dicom", [("pediatric_cxr_pneumonia_classification", "film_dicom.dcm"),
                                        ("retina_oct_classification", "oct_dicom.dcm")])
def test_classifier_sr_and_csv_uids(name, dicom, films, tmp_path):
    bundle = BUNDLES / name
    out = tmp_path / "out"
    bundle_runner.run_workflow(bundle, ["inference.yaml"], "infer", dataset_dir=str(films), output_dir=str(out))
    rows = {Path(r["file"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}
    source = pydicom.dcmread(films / dicom, stop_before_pixels=True)
    assert rows[dicom]["SOPInstanceUID"] == source.SOPInstanceUID
    assert rows["film_png.png"]["SOPInstanceUID"] == ""
    sr_name = dicom.replace(".dcm", "_sr.dcm")
    written = {p.name for p in out.glob("*_sr.dcm")}
    assert sr_name in written and "film_png_sr.dcm" not in written
    assert_valid_dicom(out / sr_name)
    sr = hd.sr.srread(out / sr_name)
    group = sr.content.get_image_measurement_groups()[0]
    probabilities = {m.name.meaning: m.value for m in group.get_measurements()}
    classes = [k[2:] for k in rows[dicom] if k.startswith("p_") and k[2:].isupper()]
    assert classes
    for c in classes:
        assert probabilities[f"Probability of {c}"] == pytest.approx(float(rows[dicom][f"p_{c}"]), abs=1e-5)
    finding = group.get_qualitative_evaluations()[0]
    assert finding.value.value == rows[dicom]["call"]
    image = sr.content.get_image_measurement_groups()[0].source_images[0]
    assert image.referenced_sop_instance_uid == source.SOPInstanceUID


def test_oxygen_sr_and_json_uids(films, tmp_path):
    from zoo_tools.shipped_demo import write_oxygen_csv

    data = tmp_path / "data"
    write_oxygen_csv(films / "film_dicom.dcm", data)
    out = tmp_path / "out"
    bundle_runner.run_workflow(BUNDLES / "cxr_ehr_oxygen_risk", ["inference.yaml"], "infer", dataset_dir=str(data),
                               output_dir=str(out))
    record = json.loads((out / "package_cxr.json").read_text())
    source = pydicom.dcmread(films / "film_dicom.dcm", stop_before_pixels=True)
    assert record["SOPInstanceUID"] == source.SOPInstanceUID
    assert_valid_dicom(out / "package_cxr_sr.dcm")
    group = hd.sr.srread(out / "package_cxr_sr.dcm").content.get_image_measurement_groups()[0]
    risks = {m.name.meaning: m.value for m in group.get_measurements()}
    assert risks["Probability of any_oxygen within 24h"] == pytest.approx(record["risk"]["24h"]["any_oxygen"], abs=1e-5)


def test_explain_overlay_as_secondary_capture(films, tmp_path):
    """On request, each overlay of a DICOM film is also a DICOM Secondary Capture in the film's study, at the
    film's size."""
    bundle = BUNDLES / "pediatric_cxr_pneumonia_classification"
    out = tmp_path / "out"
    bundle_runner.run_workflow(bundle, ["inference.yaml", "explain.yaml"], "infer", dataset_dir=str(films),
                               output_dir=str(out), explain_methods=["gradcam"], secondary_capture=True)
    captures = sorted((out / "explain").glob("*_sc.dcm"))
    assert [p.name for p in captures] == ["film_dicom_gradcam_sc.dcm"]  # PNG inputs have no study to join
    assert_valid_dicom(captures[0])
    sc, film = pydicom.dcmread(captures[0]), pydicom.dcmread(films / "film_dicom.dcm", stop_before_pixels=True)
    assert sc.StudyInstanceUID == film.StudyInstanceUID and sc.SeriesInstanceUID != film.SeriesInstanceUID
    assert (sc.Rows, sc.Columns) == (film.Rows, film.Columns) and sc.PhotometricInterpretation == "RGB"
    assert sc.ImageComments == "Explanation overlay, not for diagnosis: where the model looked"
    # a picture not in the source's geometry (OCT's retina band) says so in the same comment
    from common.io.dicom_results import overlay_capture

    noted = overlay_capture(film, np.zeros((8, 8, 3), np.uint8), "bundle", "0.1", "map", note="on the band")
    assert noted.ImageComments.endswith("where the model looked; on the band")



def test_dicom_only_keeps_the_file_of_a_case_whose_object_cannot_be_made(ct_series, tmp_path, monkeypatch, capfd):
    """output_format dicom: a series whose SEG / SR cannot be made still gets its NIfTI / JSON, and the log says so."""
    import common.io.dicom_results as results

    def broken(*args, **kwargs):
        raise ValueError("a source this writer cannot reference")

    monkeypatch.setattr(results, "lung_segmentation", broken)
    monkeypatch.setattr(results, "nodule_report", broken)
    seg_out, det_out = tmp_path / "seg", tmp_path / "det"
    bundle_runner.run_workflow(BUNDLES / "lung_ct_segmentation", ["inference.yaml"], "infer", dataset_dir=str(ct_series),
                               output_dir=str(seg_out), output_format="dicom")
    bundle_runner.run_workflow(BUNDLES / "lung_nodule_ct_detection", ["inference.yaml"], "infer",
                               dataset_dir=str(ct_series), output_dir=str(det_out), output_format="dicom",
                               test_time_flips=False)
    assert [p.suffix for p in seg_out.iterdir()] == [".gz"] and not list(seg_out.glob("*.dcm"))
    assert [p.suffix for p in det_out.iterdir()] == [".json"]
    log = "".join(capfd.readouterr())  # the bundles' logging.conf writes to the console
    assert "no DICOM SEG written" in log and "no DICOM SR written" in log


def test_building_objects_never_prints_a_patients_name(films, tmp_path, capfd):
    """highdicom warns about person names without a '^' and quotes them; the zoo's objects are built without
    that warning, so the name never reaches stderr (where the log redaction does not reach)."""
    import warnings

    from common.io.dicom_results import classification_report, image_header, overlay_capture

    film = pydicom.dcmread(films / "film_dicom.dcm")
    film.PatientName = "JOHNSMITH"
    film.ReferringPhysicianName = "DRWHO"
    film.save_as(tmp_path / "named.dcm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = image_header(tmp_path / "named.dcm")
        classification_report(source, {"A": 0.9, "B": 0.1}, "A", "bundle", "0.1")
        overlay_capture(source, np.zeros((film.Rows, film.Columns, 3), np.uint8), "bundle", "0.1", "map")
    said = " ".join(str(w.message) for w in caught) + "".join(capfd.readouterr())
    assert "JOHNSMITH" not in said and "DRWHO" not in said
