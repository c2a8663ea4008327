"""Patient identifiers from DICOM headers never reach a log line (common.logging_utils)."""

from __future__ import annotations

import logging
import logging.config
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from common import logging_utils
from common.logging_utils import REDACTED, PHIFilter, PHISafeFileHandler, PHISafeStreamHandler, redact

TEMPLATE = Path(__file__).resolve().parents[1] / "common" / "resources" / "logging.conf"


def _read(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)


@pytest.fixture
def ct():
    # CT_small.dcm: PatientName CompressedSamples^CT1, PatientID 1CT1, Other Patient IDs Sequence ABCD1234/1234ABCD
    return _read("CT_small.dcm")


@pytest.fixture(autouse=True)
def _clean_logging():
    logging_utils.forget_identifiers()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    yield
    for handler in list(root.handlers):
        if handler not in saved[1]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved[0])
    for handler in saved[1]:
        if handler not in root.handlers:
            root.addHandler(handler)
    logging_utils.forget_identifiers()


def _identifiers(ds: pydicom.Dataset) -> list[str]:
    values = [str(ds.PatientName), str(ds.PatientID)]
    values += [str(item.PatientID) for item in ds.get("OtherPatientIDsSequence", [])]
    values += [str(ds.get(k)) for k in ("PatientBirthDate", "AccessionNumber") if ds.get(k)]
    return values


def test_file_config_template_redacts_dataset_and_formatted_text(ct, capsys):
    logging.config.fileConfig(TEMPLATE, disable_existing_loggers=False)
    root_handlers = logging.getLogger().handlers
    assert any(isinstance(h, PHISafeStreamHandler) for h in root_handlers)
    log = logging.getLogger("bundle.test")
    identifiers = _identifiers(ct)
    assert "CompressedSamples^CT1" in identifiers and "ABCD1234" in identifiers

    log.info("header of the series: %s", ct)
    log.info("element %s", ct["PatientName"])
    log.info("PatientName=%s PatientID=%s", ct.PatientName, ct.PatientID)
    log.warning("patient_id: 'XYZ-777', slice 3 of 10, spacing 0.70 mm")
    log.info({"PatientName": "Doe^Jane", "PatientBirthDate": "19800101", "rows": 512})
    log.info("family name %s", ct.PatientName.family_name)  # bare value, remembered from the lines above
    out = capsys.readouterr().out

    assert out.count("\n") >= 6
    for value in [*identifiers, "CompressedSamples", "XYZ-777", "Doe^Jane", "19800101"]:
        assert value not in out, f"{value!r} leaked into the log"
    assert REDACTED in out
    # everything that is not an identifier survives
    assert "slice 3 of 10, spacing 0.70 mm" in out
    assert "'rows': 512" in out
    assert "Patient's Sex" in out and "Image Position (Patient)" in out
    assert "Type of Patient ID                  CS: 'TEXT'" in out


@pytest.mark.parametrize(
    ("filename", "keyword"),
    [("liver.dcm", "AccessionNumber"), ("MR2_J2KI.dcm", "PatientBirthDate"), ("rtplan.dcm", "PatientName")],
)
def test_other_identifiers_of_real_files(filename, keyword, capsys):
    ds = _read(filename)
    value = str(ds.get(keyword))
    assert value
    handler = PHISafeStreamHandler()
    log = logging.getLogger(f"bundle.{filename}")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("read %s", ds)
        log.info("value was %s", value)
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert value not in err
    if keyword == "PatientName":  # Last^First^mid^pre: no component survives either
        for part in value.split("^"):
            assert part not in err


def test_exception_text_is_redacted(ct, tmp_path):
    log_file = tmp_path / "run.log"
    handler = PHISafeFileHandler(str(log_file))
    log = logging.getLogger("bundle.exc")
    log.addHandler(handler)
    try:
        try:
            raise ValueError(f"cannot read series of PatientID={ct.PatientID}")
        except ValueError:
            log.exception("loading failed for %s", ct["PatientID"])
    finally:
        log.removeHandler(handler)
        handler.close()
    text = log_file.read_text()
    assert "ValueError" in text and "loading failed" in text
    assert "1CT1" not in text


def test_filter_keeps_plain_records_and_never_drops():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "epoch %d loss %.3f", (3, 0.25), None)
    assert PHIFilter().filter(record) is True
    assert record.getMessage() == "epoch 3 loss 0.250"


def test_redact_patterns():
    assert redact("PatientName=Doe^John, age=40") == f"PatientName={REDACTED}, age=40"
    assert redact("'PatientID': 'A12', 'Modality': 'CT'") == f"'PatientID': {REDACTED}, 'Modality': 'CT'"
    assert redact("accession_number: 998877 done") == f"accession_number: {REDACTED}"
    assert redact("(0010,0030) Patient's Birth Date                DA: '19700101'").endswith(REDACTED)
    assert redact("nothing to see") == "nothing to see"
