"""Output names that stay unique within one batch run.

Two inputs can map to one output name: ``lung_002.nii.gz`` and a DICOM folder ``lung_002/`` both become
``lung_002``. Without a check the second result silently replaces the first. :class:`UniqueNames` gives
the second one ``lung_002_2`` (then ``_3``, ...) and logs a warning naming both inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["UniqueNames"]

logger = logging.getLogger(__name__)


class UniqueNames:
    """Hands out output names, one per input source, never the same name to two sources of a run."""

    def __init__(self) -> None:
        self._source_of: dict[str, str] = {}

    def __call__(self, name: str, source: str) -> str:
        """The output name for ``source``: ``name``, or ``name_2``, ``name_3``, ... when another input of
        this run already has ``name`` (the same source always gets the same name back).

        Args:
            name: the name derived from the input (a case name, or a path without the suffix).
            source: the input it is for (its path).

        Returns:
            the name to write under.
        """
        candidate, n = name, 1
        while self._source_of.get(candidate, source) != source:
            n += 1
            candidate = f"{name}_{n}"
        if candidate != name:
            logger.warning(
                "%s and %s would both be written as %s; the second is written as %s",
                Path(self._source_of[name]).name, Path(source).name, Path(name).name, Path(candidate).name,
            )
        self._source_of[candidate] = source
        return candidate
