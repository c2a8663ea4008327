"""Batch inference that reports and skips a user's unusable cases instead of stopping.

Why an iterable dataset: MONAI's engines (``SupervisedEvaluator``, ``SupervisedTrainer``) need every batch
to be a dict with the image; a batch made only of bad cases would be empty and stop the run. Skipping
inside the dataset's iterator means the ``DataLoader`` only ever batches good cases, so no batch is
ever empty. The dataset deliberately has no ``len()``: ignite then ends the epoch when the data runs
out, instead of restarting the iterator to reach a length that skipped cases made unreachable (which
would process cases twice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from monai.data import IterableDataset, list_data_collate
from monai.transforms import apply_transform
from torch.utils.data import get_worker_info

from common.errors import find_input_error

__all__ = ["SkipBadCasesDataset", "collate_skip_bad", "find_input_error"]

logger = logging.getLogger("common.data")


class SkipBadCasesDataset(IterableDataset):
    """A MONAI dataset that logs and skips cases whose transform raises :class:`InputDataError`.

    Use it for batch inference over user data (constructed like ``monai.data.Dataset``)::

        dataset = SkipBadCasesDataset(data=datalist, transform=preprocessing)
        loader = DataLoader(dataset, batch_size=2, num_workers=0, collate_fn=collate_skip_bad)

    Each skipped case is logged at WARNING as ``skipped case <index>: <file>: <problem>`` (the file is
    the one named by the error) and recorded in :attr:`skipped` (in the main process when
    ``num_workers=0``; worker processes log only). Any other exception is a bug and propagates. A datalist
    item with an ``error`` entry (a case its builder already refused, e.g. an image path outside the data
    folder) is skipped and recorded the same way, without running the transform.

    Args:
        data: the datalist (a sequence of dicts).
        transform: the preprocessing callable (a MONAI ``Compose``).
        skip_errors: further exception types to treat as a bad case (default: only InputDataError).
    """

    def __init__(
        self,
        data: Sequence[Any],
        transform: Callable | None = None,
        skip_errors: Sequence[type[BaseException]] = (),
    ) -> None:
        super().__init__(data=data, transform=transform)
        self.skip_errors = tuple(skip_errors)
        self.skipped: list[dict[str, Any]] = []

    @property
    def num_cases(self) -> int:
        """Number of cases in the datalist, good and bad (``len()`` is left out on purpose)."""
        return len(self.data)

    def _bad_case(self, index: int, error: BaseException) -> dict[str, Any] | None:
        found = find_input_error(error)
        if found is None and self.skip_errors:
            current: BaseException | None = error
            while current is not None and not isinstance(current, self.skip_errors):
                current = current.__cause__ or current.__context__
            if current is None:
                return None
            return {"index": index, "file": None, "problem": f"{type(current).__name__}: {current}"}
        if found is None:
            return None
        return {"index": index, "file": found.path, "problem": found.problem}

    def load(self, index: int) -> Any | None:
        """The transformed case ``index``, or None (logged and recorded) when it is a bad case."""
        item = self.data[index]
        if isinstance(item, Mapping) and item.get("error"):  # refused by the datalist builder already
            self.skipped.append({"index": index, "file": None, "problem": str(item["error"])})
            logger.warning("skipped case %d: %s", index, item["error"])
            return None
        if self.transform is None:
            return item
        try:
            return apply_transform(self.transform, item)
        except Exception as error:
            record = self._bad_case(index, error)
            if record is None:
                raise
            self.skipped.append(record)
            where = f"{record['file']}: " if record["file"] else ""
            logger.warning("skipped case %d: %s%s", index, where, record["problem"])
            return None

    def __getitem__(self, index: int) -> Any | None:
        return self.load(index)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        num_workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        for index in range(worker_id, len(self.data), num_workers):
            item = self.load(index)
            if item is not None:
                yield item


def skipped_cases(dataset: Any) -> list[dict[str, Any]]:
    """The cases ``dataset`` skipped, as ``{"index", "file", "problem"}``: the writers and the batch summary read
    them from here. ``file`` is the one the error named, else the datalist item's ``image`` ("" if neither).

    Args:
        dataset: a :class:`SkipBadCasesDataset` (anything with ``skipped`` and ``data``; others give ``[]``).
    """
    data = getattr(dataset, "data", None)
    cases = []
    for record in getattr(dataset, "skipped", None) or []:
        index, file = record.get("index"), record.get("file")
        if not file and data is not None and index is not None and index < len(data):
            file = data[index].get("image", "")
        cases.append({"index": index, "file": str(file or ""), "problem": str(record.get("problem", ""))})
    return cases


def collate_skip_bad(batch: Sequence[Any]) -> Any | None:
    """MONAI's ``list_data_collate`` without the skipped (None) cases; None when nothing is left."""
    good = [item for item in batch if item is not None]
    if not good:
        return None
    return list_data_collate(good)
