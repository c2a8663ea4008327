"""Errors a user can hit with their own files."""

from __future__ import annotations

import os


class InputDataError(ValueError):
    """A user's input cannot be used.

    The message always starts with the offending file, then says what is wrong, so that a batch job
    can report the case and go on with the next one.

    Args:
        path: the file or folder the problem is in.
        problem: what is wrong with it, in words a user understands.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def find_input_error(error: BaseException) -> InputDataError | None:
    """The :class:`InputDataError` behind ``error``: itself, or the cause MONAI wrapped it in.

    ``monai.transforms.apply_transform`` re-raises a failing transform's exception as
    ``RuntimeError("applying transform ...")`` chained to the original, once per Compose level, and
    MONAI's config parser wraps a failing expression the same way.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, InputDataError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class WeightsUnavailable(SystemExit):
    """A bundle's network weights are missing, damaged or made for another network.

    A ``SystemExit`` on purpose: raised while ``python -m monai.bundle run`` parses a config, it passes
    through MONAI's and ignite's ``except Exception`` wrappers, so the user sees one line (which file,
    what is wrong, the command that makes or restores it) and exit status 1 instead of a long traceback
    whose cause is buried in the middle. Code that runs bundle configs in its own process (a notebook,
    ``ConfigWorkflow``, an NVFlare client, a MONAI Deploy operator) and must survive bad weights catches
    it by name (``except WeightsUnavailable``): ``except Exception`` does not.

    Args:
        path: the weights file.
        problem: what is wrong with it.
        remedy: the command that trains or restores it.
    """

    def __init__(self, path: str | os.PathLike, problem: str, remedy: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"error: {self.path}: {problem}. {remedy}")


class NothingWritten(SystemExit):
    """A batch run refused every input: exit status 1 with one line, so that a script or a scheduler
    sees the failure (a ``SystemExit`` for the same reason as :class:`WeightsUnavailable`).

    Args:
        summary: the batch summary (how many inputs, why they were refused).
    """

    def __init__(self, summary: str) -> None:
        self.summary = summary
        super().__init__(f"error: nothing written: {summary}")


def install_input_error_hook() -> None:
    """Make an uncaught :class:`InputDataError` end a program with one line instead of a traceback.

    A bundle run that stops on the user's data (an empty or missing dataset folder, a CSV without a
    needed column) fails inside MONAI's config parser, which wraps the error in a 40-line traceback whose
    cause is in the middle. With this hook (installed by ``import common``) the process prints
    ``error: <path>: <problem>`` on stderr and exits with status 1; set ``ZOO_TRACEBACK=1`` to see the
    traceback as well. Other exceptions keep Python's own handling.
    """
    import sys

    previous = sys.excepthook
    if getattr(previous, "_zoo_input_error_hook", False):
        return

    def hook(kind, value, traceback) -> None:
        found = find_input_error(value)
        if found is None or os.environ.get("ZOO_TRACEBACK"):
            previous(kind, value, traceback)
        if found is not None:
            sys.stderr.write(f"error: {found}\n")

    hook._zoo_input_error_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
