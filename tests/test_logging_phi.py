"""Patient identifiers from DICOM headers never reach a log line (common.logging_utils)."""

from __future__ import annotations

import logging
import logging.config
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from common import logging_utils
from common.logging_utils import REDACTED, PHIFilter, PHISafeFileHandler, PHISafeStreamHandler, redact

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "common" / "resources" / "logging.conf"


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
    saved_level, saved_handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in saved_handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved_level)
    logging_utils.forget_identifiers()


@pytest.fixture
def handlers_only():
    """Switch off the process-wide redaction that `import common` installs, to test a handler alone."""
    factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    yield
    logging.setLogRecordFactory(factory)


def _apply_logging_file(path: Path) -> None:
    """What `python -m monai.bundle run --logging_file` does with a bundle's logging.conf."""
    try:
        from monai.bundle.workflows import _apply_logging_file as apply
    except ImportError:  # an older MONAI applies it with fileConfig directly
        logging.config.fileConfig(path, disable_existing_loggers=False)
    else:
        apply(str(path))


def _identifiers(ds: pydicom.Dataset) -> list[str]:
    values = [str(ds.PatientName), str(ds.PatientID)]
    values += [str(item.PatientID) for item in ds.get("OtherPatientIDsSequence", [])]
    values += [str(ds.get(k)) for k in ("PatientBirthDate", "AccessionNumber") if ds.get(k)]
    return values


def test_logging_conf_template_redacts_dataset_and_formatted_text(ct, capsys):
    _apply_logging_file(TEMPLATE)  # MONAI accepts the template (standard handler classes only)
    assert logging.getLogger().handlers
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
def test_phi_safe_handler_alone_redacts_real_files(filename, keyword, capsys, handlers_only):
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
    assert "read " in err and "value was" in err
    assert value not in err
    if keyword == "PatientName":  # Last^First^mid^pre: no component survives either
        for part in value.split("^"):
            assert part not in err


def test_exception_text_is_redacted(ct, tmp_path, handlers_only):
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


def test_import_common_switches_redaction_on_for_every_logger():
    """A fresh process: any logger, any handler (here logging.basicConfig's), once `common` is imported."""
    code = "\n".join(
        [
            "import logging, sys",
            "logging.basicConfig(stream=sys.stdout, level=logging.INFO, format='%(message)s')",
            "import pydicom",
            "from pydicom.data import get_testdata_file",
            "ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'), stop_before_pixels=True)",
            "logging.getLogger('before').info('before import: %s', ds.PatientID)",
            "import common",
            "logging.getLogger('ignite.engine').info('dataset %s', ds)",
            "logging.getLogger('x.y').warning('id again %s', ds.PatientID)",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "before import: 1CT1"  # the identifiers are real and visible when nothing redacts
    rest = "\n".join(lines[1:])
    assert "Patient ID" in rest and "id again" in rest
    assert "1CT1" not in rest and "CompressedSamples" not in rest and "ABCD1234" not in rest
