"""The one way the benchmarks measure: a function called in a fresh interpreter, its peak memory read there.

A figure measured in the process that drew the test data, or after another benchmark, would carry their
memory and threads; so every measurement is ``module:function(**kwargs)`` run by :func:`run_in_child`, which
prints its result as one ``RESULT <json>`` line that the parent reads back.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from zoo_tools import REPO

_RESULT = "RESULT "


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB.

    Read from ``VmHWM``: ``getrusage``'s ``ru_maxrss`` is kept across ``fork``/``execve``, so a child would
    report the size of the parent that started it (e.g. the one that drew a 512^3 phantom).

    Returns:
        the peak in MiB (``ru_maxrss`` where ``/proc`` is not available).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_env(threads: int) -> dict[str, str]:
    """The environment of a measuring child: this checkout first on the path, ``threads`` OpenMP threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_in_child(
    target: str, kwargs: dict[str, Any] | None = None, threads: int = 1, echo: bool = False, timeout: float | None = None
) -> dict[str, Any]:
    """Call ``target`` (``"module:function"``) with ``kwargs`` in a fresh Python process and return its dict.

    The function gets ``threads`` as its ``threads`` argument when it takes one and ``kwargs`` has none.

    Args:
        target: ``"package.module:function"``; the function returns a JSON-serialisable dict.
        kwargs: its keyword arguments (JSON-serialisable).
        threads: torch / OpenMP threads of the child.
        echo: print the child's other output lines (progress) when it ends; otherwise they are dropped.
        timeout: seconds before the child is killed.

    Returns:
        the function's figures, plus ``process_peak_rss_mib`` (the child's peak) and ``process_wall_s``.

    Raises:
        RuntimeError: the child failed; the message ends with its standard error.
    """
    request = json.dumps({"target": target, "kwargs": kwargs or {}, "threads": int(threads)})
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "from zoo_tools.benchmarks.harness import _child_main; _child_main()", request],
        cwd=REPO, env=child_env(threads), capture_output=True, text=True, timeout=timeout,
    )
    wall = time.perf_counter() - start
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT):
            result = json.loads(line[len(_RESULT):])
        elif echo:
            print(line, flush=True)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"{target} failed in its child process (exit code {proc.returncode}):\n{proc.stderr[-3000:]}")
    result["process_wall_s"] = round(wall, 2)
    return result


def _child_main() -> None:
    """The child's side of :func:`run_in_child` (request as JSON in ``sys.argv[1]``)."""
    import torch

    request = json.loads(sys.argv[1])
    torch.set_num_threads(request["threads"])
    module, _, name = request["target"].partition(":")
    fn = getattr(importlib.import_module(module), name)
    kwargs = dict(request["kwargs"])
    try:
        if "threads" in inspect.signature(fn).parameters:
            kwargs.setdefault("threads", request["threads"])
    except (TypeError, ValueError):  # builtins without a signature
        pass
    figures = fn(**kwargs)
    figures["process_peak_rss_mib"] = round(peak_rss_mib(), 1)
    print(_RESULT + json.dumps(figures, default=str), flush=True)
