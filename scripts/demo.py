"""The main job: every bundle's shipped weights on data the demo generates, in one table, in minutes.

    python scripts/demo.py --out demo_output [--bundles lung_ct_segmentation,retina_oct_classification]
                           [--force] [--real_data ../shared/data/chest_xray2017_train224]
    python scripts/demo.py --train --out demo_output/train     # `make demo-train`: train every bundle first

Default (`make demo`, zoo_tools/shipped_demo.py): per bundle, generate a small synthetic set, evaluate the
shipped `models/model.pt` on its test split, run `inference.yaml` with no checkpoint override, export to
ONNX with the parity check and run ONNX Runtime inference (+ occlusion / Grad-CAM maps for the
classifiers, + the real chest radiograph that pydicom-data ships and real ChestXRay2017 films where
present). With --train (`make demo-train`, zoo_tools/demo.py): generate the demo-scale synthetic sets, train
every bundle briefly with its own train.yaml, evaluate, export and infer (about 30 minutes).

Prints one table and writes it to <out>/summary.md with the PNG reports beside it; logs of every step in
<out>/logs/. Re-running reuses every step already done (--force redoes them). The exit code is non-zero
when a bundle failed.
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
    out: str | None = None,
    bundles: str | tuple | list | None = None,
    force: bool = False,
    real_data: str | None = None,
    threads: int = 1,
    train: bool = False,
) -> None:
    """Run the demo and print the summary table; exits with status 1 when a bundle failed.

    Args:
        out: output folder (data, reports, logs, summary.md); default ``demo_output``, with ``--train``
            ``demo_output/train`` (the two demos never share step records or files).
        bundles: comma-separated bundle names (default: all five).
        force: redo every step even when its outputs exist.
        real_data: real ChestXRay2017 training folder for the pneumonia weights (default
            ``../shared/data/chest_xray2017_train224`` from the repository root, used when present).
        threads: intra-op threads (OMP_NUM_THREADS) of every step. 1 by default: the bundles' data loaders
            use the other core, and on a machine shared with other jobs two threads per process made
            training about ten times slower than one (OpenMP threads wait for each other).
        train: train every bundle from scratch on demo-scale synthetic data first (``make demo-train``).

    Raises:
        SystemExit: (status 1) when a bundle failed; the table still lists every bundle.
    """
    from tqdm import tqdm

    from common.io.atomic import atomic_write_text
    from zoo_tools import demo, shipped_demo

    table = demo.DEMOS if train else shipped_demo.SHIPPED
    if bundles is None:
        names = list(table)
    else:
        names = [n.strip() for n in (bundles.split(",") if isinstance(bundles, str) else bundles) if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown bundle(s) {unknown}; choose from {', '.join(table)}")
    out_dir = Path(out or ("demo_output/train" if train else "demo_output")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    real_dir = Path(real_data) if real_data else (REPO / demo.REAL_CXR_DIR)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = str(int(threads))
    env.setdefault("PYTHONUNBUFFERED", "1")

    make_steps = demo.bundle_steps if train else shipped_demo.shipped_steps
    plans = {name: make_steps(table[name], out_dir, sys.executable, real_dir) for name in names}
    start = time.perf_counter()
    bar = tqdm(total=sum(len(s) for s in plans.values()), unit="step", desc="demo", dynamic_ncols=True)

    def report(step, result) -> None:
        elapsed = time.perf_counter() - start
        what = {"ran": f"done in {result.seconds:.1f} s", "cached": "reused (outputs exist)",
                "skipped": f"skipped ({result.detail})", "failed": f"FAILED after {result.seconds:.1f} s: {result.detail}"}
        tqdm.write(f"[{elapsed:7.1f} s] {step.bundle}: {step.name} {what[result.status]}")
        if result.status == "failed":
            log = out_dir / "logs" / f"{step.bundle}.{step.name}.log"
            tqdm.write(f"  last lines of {log}:\n" + "\n".join("    " + ln for ln in demo.tail(log).splitlines()))
        bar.update(1)

    rows, pngs = [], []
    for name, steps in plans.items():
        bar.set_description(name)
        results = demo.run_bundle(steps, out_dir, force=force, env=env, report=report)
        rows += demo.bundle_rows(table[name], out_dir, results) if train else shipped_demo.shipped_rows(
            table[name], out_dir, results)
        pngs += demo.collect_pngs(table[name], out_dir, out_dir)
    bar.close()
    wall = time.perf_counter() - start
    relative = [p.relative_to(out_dir) for p in pngs]
    if train:
        settings = {n: {"synthetic": table[n].synthetic, "seed": table[n].seed, "train": table[n].train,
                        "evaluate": table[n].evaluate} for n in names}
        summary, rendered = demo.summary_markdown(rows, relative, wall, settings), demo.render_table(rows)
    else:
        summary, rendered = shipped_demo.shipped_summary_markdown(rows, relative, wall), shipped_demo.render_shipped_table(rows)
    atomic_write_text(out_dir / "summary.md", summary)
    print()
    print(rendered)
    print(f"wall clock {wall:.0f} s; summary and figures in {out_dir / 'summary.md'}")
    failed = [r.bundle for r in rows if r.status.startswith("error")]
    if failed:
        raise SystemExit(f"FAILED: {', '.join(failed)} (logs in {out_dir / 'logs'})")


if __name__ == "__main__":
    fire.Fire(main)
