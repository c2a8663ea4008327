"""A hospital's round trip: studies stored in a DICOM server, read by the bundles over DICOMweb, results stored back.

Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``, which ``.ci/run`` installs) is started on the
loopback interface for this module; a CT series and a chest film are stored into it; ``zoo run`` retrieves each
study over WADO-RS, runs the bundle and stores its SEG / SR over STOW-RS; the objects are read back from Orthanc
and their references and content checked. Also ``zoo run`` over a local folder of several studies: the model is
loaded once, a progress bar counts the cases, and each series gets its own SEG.
"""

from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import generate_uid
from test_dicom_results import assert_valid_dicom, ct_series, films  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """An empty Orthanc with DICOMweb on 127.0.0.1; yields its base URL (REST API at the root)."""
    binary = shutil.which("Orthanc") or (shutil.which("Orthanc", path="/usr/sbin") if Path("/usr/sbin").is_dir() else None)
    if binary is None or not DICOMWEB_PLUGIN.is_file():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (Debian: orthanc, orthanc-dicomweb; .ci/run installs them)")
    root = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    config = {
        "Name": "zoo-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": port, "DicomPort": _free_port(), "HttpBindAddress": "127.0.0.1", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "w")
    server = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/system", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    else:
        server.kill()
        pytest.fail(f"Orthanc did not start: {(root / 'orthanc.log').read_text()[-2000:]}")
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()


def _upload(url: str, files) -> None:
    for path in files:
        request = urllib.request.Request(f"{url}/instances", data=Path(path).read_bytes(), method="POST")
        urllib.request.urlopen(request, timeout=30).read()


def _series_of_modality(url: str, study_uid: str, modality: str) -> list[pydicom.Dataset]:
    """The instances of the study's series of one modality, retrieved back from the server over DICOMweb."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=f"{url}/dicom-web")
    found = client.search_for_series(study_uid, search_filters={"Modality": modality})
    return [ds for s in found for ds in client.retrieve_series(study_uid, s["0020000E"]["Value"][0])]


def _zoo(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "zoo_tools.cli", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2",
                                                         "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_ct_study_from_pacs_gets_its_seg_stored_back(orthanc, ct_series, tmp_path):  # noqa: F811
    files = sorted(p for p in ct_series.rglob("*") if p.is_file())
    _upload(orthanc, files)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    study = f"{orthanc}/dicom-web/studies/{source.StudyInstanceUID}"
    _zoo("run", "lung_ct_segmentation", study, str(tmp_path / "out"), "--store", f"{orthanc}/dicom-web")
    segs = _series_of_modality(orthanc, source.StudyInstanceUID, "SEG")
    assert len(segs) == 1
    seg = hd.seg.Segmentation.from_dataset(segs[0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert {s.SegmentLabel for s in seg.SegmentSequence} == {"Right lung", "Left lung"}
    referenced = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                  for f in seg.PerFrameFunctionalGroupsSequence}
    assert referenced <= {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert len(referenced) > 5  # lungs on many slices of the phantom


def test_film_from_pacs_gets_its_sr_stored_back(orthanc, films, tmp_path):  # noqa: F811
    film = films / "film_dicom.dcm"
    _upload(orthanc, [film])
    source = pydicom.dcmread(film, stop_before_pixels=True)
    out = tmp_path / "out"
    _zoo("run", "pediatric_cxr_pneumonia_classification", f"{orthanc}/dicom-web/studies/{source.StudyInstanceUID}",
         str(out), "--store", f"{orthanc}/dicom-web")
    reports = _series_of_modality(orthanc, source.StudyInstanceUID, "SR")
    assert len(reports) == 1
    assert_valid_dicom(next(out.glob("*_sr.dcm")))
    group = hd.sr.Comprehensive3DSR.from_dataset(reports[0]).content.get_image_measurement_groups()[0]
    assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
    row = next(csv.DictReader(open(out / "predictions.csv")))
    assert row["SOPInstanceUID"] == source.SOPInstanceUID
    probabilities = {m.name.meaning: m.value for m in group.get_measurements()}
    assert probabilities["Probability of VIRAL"] == pytest.approx(float(row["p_VIRAL"]), abs=1e-5)


def test_zoo_run_over_several_studies_loads_the_model_once(ct_series, tmp_path):  # noqa: F811
    """Two studies in one folder: one SEG per series, one weights load, a progress bar over both cases."""
    studies = tmp_path / "studies"
    shutil.copytree(ct_series, studies / "a")
    study, series = generate_uid(), generate_uid()
    for path in sorted(p for p in (studies / "a").rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        (studies / "b").mkdir(exist_ok=True)
        ds.save_as(studies / "b" / path.name)
    result = _zoo("run", "lung_ct_segmentation", str(studies), str(tmp_path / "out"), "--format", "dicom")
    segs = sorted((tmp_path / "out").glob("*.dcm"))
    assert len(segs) == 2
    assert {pydicom.dcmread(p).ReferencedSeriesSequence[0].SeriesInstanceUID for p in segs} == {
        pydicom.dcmread(next((studies / "a").rglob("*.dcm"))).SeriesInstanceUID, series}
    log = result.stdout + result.stderr
    assert log.count("Restored all variables") == 1
    assert "2/2" in result.stderr and "batch done: 2 scan(s) written" in log
    assert Path(sys.executable).with_name("zoo").is_file()  # the console entry point pip installed
