"""The repository's own tooling: nothing a bundle runs.

`common` holds what the bundle configs import at run time (and what an archive vendors); this package holds
what works *on* the bundles from the repository: the demo drivers (``make demo``, ``make demo-train``), the
bundle verifier (``scripts/verify_bundles.py``), the benchmark harness (``scripts/benchmark.py``), bundle
archives and Triton model repositories (``scripts/package_bundle.py``, ``scripts/export_triton.py``) and the
test phantoms of the nodule detector. No bundle config imports it and ``package_bundle`` leaves it out.
"""

from pathlib import Path

#: the checkout this package belongs to (its ``bundles/``, ``scripts/`` and ``docs/``)
REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"

# MONAI warns on every `monai.bundle run` that a config's `_target_`s and `$` expressions run code: a notice for
# configs from elsewhere. The tools below start only this repository's bundles, so their logs go without it
# (a user's own `python -m monai.bundle run` still shows it).
MONAI_CONFIG_NOTICE = "ignore:parsing config_file:UserWarning"


def monai_run_argv(python: str | None = None) -> list[str]:
    """The command ``python -m monai.bundle run`` as the repository's tools start it (see above).

    Args:
        python: the interpreter (default: this one).

    Returns:
        the argument list, to be followed by ``--config_file ...``.
    """
    import sys

    return [python or sys.executable, "-W", MONAI_CONFIG_NOTICE, "-m", "monai.bundle", "run"]


def run_bundle(bundle_root: str | Path, configs: list[Path], args: dict, log: Path) -> float:
    """Run ``monai.bundle run`` on ``configs`` with ``--key value`` for each of ``args``, logging to ``log``.

    Args:
        bundle_root: the bundle.
        configs: its config files, merged in order.
        args: overrides (``str(value)`` is passed).
        log: the run's log file (its first line is the command).

    Returns:
        the wall seconds of the run.

    Raises:
        SystemExit: the run failed (the message names the log).
    """
    import subprocess
    import time

    config_arg = str([str(c) for c in configs]) if len(configs) > 1 else str(configs[0])
    cmd = [*monai_run_argv(), "--config_file", config_arg, "--bundle_root", str(bundle_root)]
    for key, value in args.items():
        cmd += [f"--{key}", str(value)]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"monai.bundle run {config_arg} failed (exit {result.returncode}); see {log}")
    return time.time() - start
