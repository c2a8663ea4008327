"""A PACS as input and output, over DICOMweb (QIDO-RS, WADO-RS, STOW-RS; ``dicomweb-client``).

A study is fetched into a local folder (one sub-folder per series, one file per instance), which the bundles
read like any other DICOM folder; the SEG and SR objects they write are stored back. Nothing is logged of the
objects but their counts and UIDs' series numbers, as for local DICOM.

    study = parse_study_url("http://pacs:8042/dicom-web/studies/1.2.3")   # (base URL, StudyInstanceUID)
    folder = fetch_study(*study, dest)                                     # dest/<series number>_<modality>/*.dcm
    store(base_url, [path, ...])                                           # STOW-RS
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from common.errors import InputDataError

logger = logging.getLogger(__name__)

_STUDY_URL = re.compile(r"^(?P<base>https?://.+?)/studies/(?P<study>[0-9.]+)/?$")


def is_study_url(text: str) -> bool:
    """Whether ``text`` names a study on a DICOMweb server (``http(s)://.../studies/<StudyInstanceUID>``)."""
    return bool(_STUDY_URL.match(str(text)))


def parse_study_url(url: str) -> tuple[str, str]:
    """``http(s)://host/.../studies/<uid>`` -> (the DICOMweb base URL, the StudyInstanceUID)."""
    match = _STUDY_URL.match(url)
    if not match:
        raise ValueError(f"{url}: not a DICOMweb study URL (http(s)://<server>/<dicom-web root>/studies/<StudyInstanceUID>)")
    return match["base"], match["study"]


def _client(base_url: str):
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=base_url)


def fetch_study(base_url: str, study_uid: str, dest: str | os.PathLike) -> Path:
    """Retrieve every instance of a study (WADO-RS) into ``dest``, one folder per series.

    Args:
        base_url: the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``.
        study_uid: the StudyInstanceUID.
        dest: the folder to fill (created).

    Returns:
        ``dest``.

    Raises:
        InputDataError: the server cannot be reached, or the study has no instances.
    """
    from common.io.atomic import atomic_path
    from common.logging_utils import remember_identifiers

    dest = Path(dest)
    try:
        instances = _client(base_url).retrieve_study(study_uid)
    except Exception as e:  # connection refused, 404, 401, ...
        raise InputDataError(f"{base_url}/studies/{study_uid}", f"cannot retrieve the study ({type(e).__name__}: {e})") from e
    if not instances:
        raise InputDataError(f"{base_url}/studies/{study_uid}", "the study has no instances")
    for ds in instances:
        remember_identifiers(ds)  # any later log line that quotes them is redacted
        folder = dest / f"series_{ds.get('SeriesNumber', 'x')}_{ds.get('Modality', 'OT')}_{str(ds.SeriesInstanceUID)[-8:]}"
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"{ds.SOPInstanceUID}.dcm") as tmp:
            ds.save_as(str(tmp), enforce_file_format=True)
    logger.info("retrieved %d instances of one study into %s", len(instances), dest)
    return dest


def store(base_url: str, files: Sequence[str | os.PathLike]) -> int:
    """Store DICOM files on the server (STOW-RS); returns how many were sent.

    Raises:
        InputDataError: the server refused them (the message names the first file).
    """
    import pydicom

    if not files:
        return 0
    datasets = [pydicom.dcmread(f) for f in files]
    try:
        _client(base_url).store_instances(datasets)
    except Exception as e:
        raise InputDataError(files[0], f"{base_url} did not store the results ({type(e).__name__}: {e})") from e
    logger.info("stored %d result object(s) on %s", len(files), base_url)
    return len(files)
