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
