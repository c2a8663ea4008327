"""Datasets and datalists: the public layouts a user brings, and batch inference that skips bad cases.

``SkipBadCasesDataset`` + ``collate_skip_bad`` (:mod:`common.data.skip_bad`): a case whose transform raises
:class:`common.errors.InputDataError` is logged (file and problem) and skipped; the rest go on.
"""

from common.data.skip_bad import SkipBadCasesDataset, collate_skip_bad, find_input_error, skipped_cases

__all__ = ["SkipBadCasesDataset", "collate_skip_bad", "find_input_error", "skipped_cases"]
