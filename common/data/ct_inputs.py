"""Finding the CT cases in what a user points a CT bundle at, by content rather than by file suffix.

Both CT bundles (lung segmentation, nodule detection) list their inference cases here:

* a volume file (``.nii``, ``.nii.gz``, ``.mhd``, ``.mha``) is one case;
* a folder that holds DICOM files is one case (a DICOM series, which the loader picks from the folder).
  A file is DICOM when it carries the DICOM preamble (``DICM`` at byte 128), whatever its name: a text
  file called ``x.dcm`` is not one, and an extension-less slice is;
* a folder holding both is both: a stray ``.dcm`` beside NIfTI volumes adds one case (which the loader
  refuses if it is not a usable series) and hides none of the volumes.

Hidden entries are skipped; symbolic links to folders are not followed (a link loop cannot hang the
search).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["VOLUME_SUFFIXES", "ct_cases", "holds_dicom", "is_dicom_file"]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha")


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (the ``DICM`` preamble), by content only."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _visible(entries: list[Path]) -> list[Path]:
    return [e for e in entries if not e.name.startswith(".")]


def holds_dicom(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` directly holds at least one DICOM file."""
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return False
    return any(e.is_file() and is_dicom_file(e) for e in _visible(entries))


def ct_cases(
    folder: str | os.PathLike, recursive: bool = False, skip_folder: Callable[[str], bool] = lambda name: False
) -> list[str]:
    """The CT cases in ``folder``, in sorted order: volume files, and folders that hold DICOM files.

    Args:
        folder: the folder a user points inference at.
        recursive: search all sub-folders (otherwise: ``folder`` itself and its direct sub-folders).
        skip_folder: sub-folder names not to search (label or mask folders).

    Returns:
        paths of the cases (files and DICOM folders).
    """
    cases: list[str] = []

    def visit(directory: Path, depth: int) -> None:
        try:
            entries = _visible(sorted(directory.iterdir()))
        except OSError:
            return
        files = [e for e in entries if e.is_file()]
        if any(is_dicom_file(e) for e in files):
            cases.append(str(directory))
        cases.extend(str(e) for e in files if e.name.lower().endswith(VOLUME_SUFFIXES))
        for sub in entries:
            if not sub.is_dir() or sub.is_symlink() or skip_folder(sub.name):
                continue
            if recursive:
                visit(sub, depth + 1)
            elif depth == 0 and holds_dicom(sub):
                cases.append(str(sub))

    visit(Path(folder), 0)
    return cases
