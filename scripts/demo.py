"""The main job: every bundle end to end on the embedded synthetic data, in one table.

    python scripts/demo.py --out demo_output [--bundles lung_ct_segmentation,retina_oct_classification]
                           [--force] [--real_data ../shared/data/chest_xray2017_train224]

Per bundle: generate its synthetic set, train briefly with its own train.yaml, evaluate
(train.yaml + evaluate.yaml), export to ONNX with the parity check, and run ONNX Runtime inference on the
held-out inputs (+ occlusion / Grad-CAM maps for the classifiers, + the shipped real-data pneumonia
weights). Prints one table and writes it to <out>/summary.md with the PNG reports beside it; logs of
every step in <out>/logs/. Re-running reuses every step already done (--force redoes them). The exit
code is non-zero when a bundle failed. The demo-scale settings are the table `DEMOS` in common/demo.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import fire

# run as a file (`python scripts/...`): make this checkout's `common` importable first
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(
    out: str = "demo_output",
    bundles: str | tuple | list | None = None,
    force: bool = False,
    real_data: str | None = None,
    threads: int = 1,
) -> None:
    """Run the demo and print the summary table; exits with status 1 when a bundle failed.

    Args:
        out: output folder (data, checkpoints, reports, logs, summary.md).
        bundles: comma-separated bundle names (default: all five).
        force: redo every step even when its outputs exist.
        real_data: real ChestXRay2017 training folder for the shipped pneumonia weights (default
            ``../shared/data/chest_xray2017_train224`` from the repository root, used when present).
        threads: intra-op threads (OMP_NUM_THREADS) of every step. 1 by default: the bundles' data loaders
            use the other core, and on a machine shared with other jobs two threads per process made
            training about ten times slower than one (OpenMP threads wait for each other).

    Raises:
        SystemExit: (status 1) when a bundle failed; the table still lists every bundle.
    """
    from tqdm import tqdm

    from common.demo import (
        DEMOS,
        REAL_CXR_DIR,
        bundle_rows,
        bundle_steps,
        collect_pngs,
        render_table,
        run_bundle,
        summary_markdown,
        tail,
    )
    from common.io.atomic import atomic_write_text

    if bundles is None:
        names = list(DEMOS)
    else:
        names = [n.strip() for n in (bundles.split(",") if isinstance(bundles, str) else bundles) if n.strip()]
    unknown = [n for n in names if n not in DEMOS]
    if unknown:
        raise SystemExit(f"unknown bundle(s) {unknown}; choose from {', '.join(DEMOS)}")
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    real_dir = Path(real_data) if real_data else (REPO / REAL_CXR_DIR)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = str(int(threads))
    env.setdefault("PYTHONUNBUFFERED", "1")

    plans = {name: bundle_steps(DEMOS[name], out_dir, sys.executable, real_dir) for name in names}
    start = time.perf_counter()
    bar = tqdm(total=sum(len(s) for s in plans.values()), unit="step", desc="demo", dynamic_ncols=True)

    def report(step, result) -> None:
        elapsed = time.perf_counter() - start
        what = {"ran": f"done in {result.seconds:.1f} s", "cached": "reused (outputs exist)",
                "skipped": f"skipped ({result.detail})", "failed": f"FAILED after {result.seconds:.1f} s: {result.detail}"}
        tqdm.write(f"[{elapsed:7.1f} s] {step.bundle}: {step.name} {what[result.status]}")
        if result.status == "failed":
            log = out_dir / "logs" / f"{step.bundle}.{step.name}.log"
            tqdm.write(f"  last lines of {log}:\n" + "\n".join("    " + ln for ln in tail(log).splitlines()))
        bar.update(1)

    rows, pngs = [], []
    for name, steps in plans.items():
        bar.set_description(name)
        results = run_bundle(steps, out_dir, force=force, env=env, report=report)
        rows += bundle_rows(DEMOS[name], out_dir, results)
        pngs += collect_pngs(DEMOS[name], out_dir, out_dir)
    bar.close()
    wall = time.perf_counter() - start
    settings = {n: {"synthetic": DEMOS[n].synthetic, "seed": DEMOS[n].seed, "train": DEMOS[n].train,
                    "evaluate": DEMOS[n].evaluate} for n in names}
    summary = summary_markdown(rows, [p.relative_to(out_dir) for p in pngs], wall, settings)
    atomic_write_text(out_dir / "summary.md", summary)
    print()
    print(render_table(rows))
    print(f"wall clock {wall:.0f} s; summary and figures in {out_dir / 'summary.md'}")
    failed = [r.bundle for r in rows if r.status.startswith("error")]
    if failed:
        raise SystemExit(f"FAILED: {', '.join(failed)} (logs in {out_dir / 'logs'})")


if __name__ == "__main__":
    fire.Fire(main)
