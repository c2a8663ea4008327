"""Keep DICOM patient identifiers out of every log line.

``PHIFilter`` rewrites each log record before any handler writes it:

* when a pydicom ``Dataset`` (or ``DataElement``) is among the record's arguments or is the message, the
  values of its identifying elements (also inside sequences, e.g. Other Patient IDs Sequence) are
  replaced wherever they appear in the message; they are also remembered, so a later line that prints
  only the bare value (``f"{ds.PatientID}"``) is redacted too;
* ``PatientName=...``, ``patient_id: ...``, ``'PatientID': '...'`` and pydicom's own element printout
  (``(0010,0010) Patient's Name  PN: '...'``) have their values replaced, whoever wrote them.

How it is switched on. ``logging.config.fileConfig`` (what ``python -m monai.bundle run --logging_file``
uses) cannot attach filters, and MONAI 1.6 refuses a ``logging.conf`` whose handler classes are not
from ``logging``/``logging.handlers`` (GHSA-wvpx-5qmp-46g3), so a bundle's ``logging.conf`` (copied
from ``common/resources/logging.conf``) names the standard ``StreamHandler``. The redaction is
installed instead by :func:`install_phi_redaction`, which ``import common`` calls: it wraps the
logging record factory, so every record of every logger is redacted when it is created, whatever
handlers ``logging.conf``, MONAI or ignite attach later. Every bundle config imports ``common``
(``common.bundle_utils``, ``common.transforms``, ...), so this is on before any DICOM file is read.
``PHISafeStreamHandler``/``PHISafeFileHandler`` carry the filter themselves, for ``dictConfig`` and
scripts that set up their own handlers.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

REDACTED = "[REDACTED]"

# DICOM keywords of the patient identifiers that must never reach a log.
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "AccessionNumber",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientTelephoneNumbers",
    "IssuerOfPatientID",
    "MedicalRecordLocator",
)

# Free text and the names of staff and sites: descriptions and comments are typed by people and often carry
# a name or a record number ("CHEST DOE^JOHN MRN12345"). Their values are remembered whole (person names
# also by component) when a reader opens a file, and redacted wherever they appear in a later log line.
FREE_TEXT_KEYWORDS: tuple[str, ...] = (
    "SeriesDescription",
    "StudyDescription",
    "ImageComments",
    "PatientComments",
    "AdditionalPatientHistory",
    "AdmittingDiagnosesDescription",
    "RequestedProcedureDescription",
    "PerformedProcedureStepDescription",
    "ProtocolName",
    "DerivationDescription",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "RequestingPhysician",
    "PhysiciansOfRecord",
)
# Free-text values shorter than this are not remembered: a description "CHEST" would otherwise redact the
# word wherever a log line uses it.
MIN_FREE_TEXT_LENGTH = 6
# The same elements as pydicom prints them (its element "name"), e.g. "(0010,0010) Patient's Name  PN: 'X'".
_DICOM_NAMES: tuple[str, ...] = (
    "Patient's Name",
    "Patient ID",
    "Patient's Birth Date",
    "Patient's Birth Time",
    "Accession Number",
    "Other Patient IDs",
    "Other Patient Names",
    "Patient's Address",
    "Patient's Birth Name",
    "Patient's Mother's Birth Name",
    "Patient's Telephone Numbers",
    "Issuer of Patient ID",
    "Medical Record Locator",
)

# Bare values shorter than this are not searched for in free text (an ID "1" would redact every digit);
# the keyword patterns below still redact them wherever they are labelled.
MIN_VALUE_LENGTH = 3
_MAX_REMEMBERED = 10_000


def _keyword_regex(keyword: str) -> str:
    # PatientBirthDate also matches patient_birth_date, "patient birth date", PATIENTBIRTHDATE
    parts = re.findall(r"[A-Z][a-z]*|[A-Z]+(?![a-z])", keyword) or [keyword]
    return r"[_ ]?".join(re.escape(p) for p in parts)


_VALUE = r"""(?:'[^'\n]*'|"[^"\n]*"|\[[^\]\n]*\]|[^,;\n)}\]]*)"""
_KEYWORD_PATTERN = re.compile(
    r"(?<![A-Za-z])(?P<key>"
    + "|".join(_keyword_regex(k) for k in sorted(PHI_KEYWORDS, key=len, reverse=True))
    + r")(?P<sep>['\"]?\s*[=:]\s*)(?P<value>"
    + _VALUE
    + ")",
    re.IGNORECASE,
)
_DICOM_NAME_PATTERN = re.compile(
    r"(?<!Type of )(?P<key>" + "|".join(re.escape(n) for n in sorted(_DICOM_NAMES, key=len, reverse=True)) + r")"
    r"(?P<sep>\s+[A-Z]{2}:\s?)(?P<value>[^\n]*)"
)

_remembered: OrderedDict[str, None] = OrderedDict()
_remembered_lock = threading.Lock()


def _value_strings(value: Any) -> Iterator[str]:
    """The strings a value may appear as in a log: itself, and for person names each component."""
    if value is None:
        return
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        for v in value:
            yield from _value_strings(v)
        return
    text = str(value).strip()
    if not text:
        return
    yield text
    # person names: "Family^Given^Middle" is often logged as components or with spaces
    parts = [p for p in re.split(r"[\^=]", text) if p.strip()]
    if len(parts) > 1:
        yield " ".join(parts)
        yield from (p.strip() for p in parts)


def identifier_values(obj: Any) -> set[str]:
    """The patient-identifier and free-text values held by a pydicom ``Dataset`` or ``DataElement``
    (sequences included; free text of at least ``MIN_FREE_TEXT_LENGTH`` characters)."""
    try:
        from pydicom.dataelem import DataElement
        from pydicom.dataset import Dataset
    except ImportError:  # pragma: no cover - pydicom is a dependency
        return set()
    values: set[str] = set()
    if isinstance(obj, DataElement):
        elements: Iterable[Any] = [obj]
        if obj.VR == "SQ":
            elements = [obj, *(e for item in obj.value for e in item.iterall())]
    elif isinstance(obj, Dataset):
        elements = obj.iterall()
    else:
        return values
    for elem in elements:
        if elem.keyword in PHI_KEYWORDS:
            values.update(_value_strings(elem.value))
        elif elem.keyword in FREE_TEXT_KEYWORDS:
            if elem.VR == "PN":  # staff names: whole and by component, as patient names
                values.update(v for v in _value_strings(elem.value) if len(v) >= MIN_FREE_TEXT_LENGTH)
            else:
                text = str(elem.value).strip()
                if len(text) >= MIN_FREE_TEXT_LENGTH:
                    values.add(text)
    return values


def remember_identifiers(obj: Any) -> set[str]:
    """Remember the identifier values of a Dataset/DataElement so that later log lines never show them.

    Readers call this when they open a DICOM file; :class:`PHIFilter` also calls it for every Dataset it
    sees in a log record.

    Returns:
        the values found.
    """
    values = identifier_values(obj)
    with _remembered_lock:
        for v in values:
            if len(v) >= MIN_VALUE_LENGTH:
                _remembered[v] = None
                _remembered.move_to_end(v)
        while len(_remembered) > _MAX_REMEMBERED:
            _remembered.popitem(last=False)
    return values


def forget_identifiers() -> None:
    """Drop all remembered identifier values (tests; long-running services between studies)."""
    with _remembered_lock:
        _remembered.clear()


def redact(text: str, values: Iterable[str] = ()) -> str:
    """Redact labelled identifiers and the given (plus remembered) identifier values in ``text``.

    Args:
        text: the message.
        values: identifier values to remove wherever they appear.

    Returns:
        ``text`` with each identifier value replaced by ``[REDACTED]``.
    """

    def _sub(match: re.Match) -> str:
        value = match.group("value")
        if not value.strip():
            return match.group(0)
        return match.group("key") + match.group("sep") + REDACTED

    text = _DICOM_NAME_PATTERN.sub(_sub, text)
    text = _KEYWORD_PATTERN.sub(_sub, text)
    with _remembered_lock:
        known = set(_remembered)
    known.update(v for v in values if len(v) >= MIN_VALUE_LENGTH)
    for value in sorted(known, key=len, reverse=True):  # longest first: a full name before its parts
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def _record_objects(record: logging.LogRecord) -> Iterator[Any]:
    yield record.msg
    args = record.args
    if isinstance(args, dict):
        yield from args.values()
    elif isinstance(args, tuple):
        for arg in args:
            yield arg
            if isinstance(arg, (list, tuple)):
                yield from arg
            elif isinstance(arg, dict):
                yield from arg.values()


class PHIFilter(logging.Filter):
    """A logging filter that removes DICOM patient identifiers from each record (it never drops one).

    The record's message is formatted, redacted and stored back with ``args`` cleared, so every handler
    after this one sees only the redacted text; exception and stack texts are redacted too.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_phi_redacted", False):
            return True
        values: set[str] = set()
        for obj in _record_objects(record):
            values |= remember_identifiers(obj)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep logging's own behaviour of showing msg and args
            message = f"{record.msg} {record.args}"
        record.msg = redact(message, values)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, values)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, values)
        record._phi_redacted = True
        return True


class PHISafeStreamHandler(logging.StreamHandler):
    """``logging.StreamHandler`` with :class:`PHIFilter` installed (usable from ``fileConfig``)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self.addFilter(PHIFilter())


class PHISafeFileHandler(logging.FileHandler):
    """``logging.FileHandler`` with :class:`PHIFilter` installed (usable from ``fileConfig``)."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = "utf-8", delay: bool = False) -> None:
        super().__init__(filename, mode=mode, encoding=encoding, delay=delay)
        self.addFilter(PHIFilter())


def install_phi_filter(logger: logging.Logger | None = None) -> None:
    """Add :class:`PHIFilter` to every handler of ``logger`` (default: all loggers known so far).

    For handlers created by libraries outside ``logging.conf`` (e.g. a handler MONAI or ignite attached
    to its own logger with ``propagate=False``).
    """
    loggers = [logger] if logger is not None else [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if not any(isinstance(f, PHIFilter) for f in handler.filters):
                handler.addFilter(PHIFilter())


_factory_lock = threading.Lock()
_installed_factory: Any = None


def install_phi_redaction() -> None:
    """Redact patient identifiers from every log record of this process when the record is created.

    Wraps ``logging.getLogRecordFactory()`` (idempotent: a second call changes nothing) and adds
    :class:`PHIFilter` to the handlers already configured. Called by ``import common``.
    """
    global _installed_factory
    with _factory_lock:
        current = logging.getLogRecordFactory()
        if current is _installed_factory:
            return
        phi_filter = PHIFilter()

        def _phi_safe_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = current(*args, **kwargs)
            phi_filter.filter(record)
            return record

        logging.setLogRecordFactory(_phi_safe_record)
        _installed_factory = _phi_safe_record
    install_phi_filter()
