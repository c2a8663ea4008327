"""The shipped weights of ``retina_oct_classification`` and the fold assignment of ``scripts/oct_crossval.py``.

* (The file's record, safe strict loading and the refusal to train over it: tests/test_shipped_weights.py.)
* ``inference.yaml`` with no checkpoint override (what a user runs on a fresh clone) classifies a few
  synthetic B-scans made on the fly (``common.synthetic.oct``) and writes ``predictions.csv`` with
  probabilities that sum to 1 and a referral per scan.
* ``oct_crossval.assign_folds`` on made-up file names: whole patients per fold, every fold with all four
  classes, the same folds for any input order; and the folds file kept in the repository obeys the same.
* Where the 48 real B-scans are present (``../shared/data/oct2017_samples48`` beside the repository, or the
  folder named by ``OCT2017_SAMPLES48``; skipped otherwise): all 48 through ``inference.yaml`` with no
  override give the calls recorded for these weights (within one scan), with the accuracy and urgent AUROC
  measured. The shipped weights were fine-tuned on these 48 scans (after synthetic pre-training), so the
  figures are a fit to their training data, not a performance estimate (the card's is the cross-validation,
  0.75); the test checks that nothing between the file and the prediction is broken (reading,
  preprocessing, float16 storage).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import bundle_runner
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "retina_oct_classification"
CONFIGS = BUNDLE / "configs"
WEIGHTS = BUNDLE / "models" / "model.pt"
CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
REAL_DATA = Path(os.environ.get("OCT2017_SAMPLES48", REPO.parent / "shared" / "data" / "oct2017_samples48"))
# the shipped 0.5.0 weights (synthetic pre-training + fine-tuning on these 48 scans, on the flattened retina band) on
# the 48 real scans they were fine-tuned on: 48 of 48 right, urgent-referral AUROC 1.0 (a fit to their training
# data); calls per file, sorted by file name (C CNV, M DME, D DRUSEN, N NORMAL), as inference.yaml gave them with
# the shipped float16 file
MIN_REAL_CORRECT = 46
MIN_REAL_URGENT_AUROC = 0.95
REAL_CALLS = "CCCCCCCCCCCCMMMMMMMMMMMMDDDDDDDDDDDDNNNNNNNNNNNN"
# the shipped 0.5.0 weights on 12 synthetic B-scans of the generator's defaults (496 x 512, seed 3): 8 of 12 measured
# (pre-trained on the calibrated generator's look, docs/experiments/oct_synthex_calibrated.yaml, then fine-tuned
# on real scans)
MIN_SYNTHETIC_CORRECT = 7  # chance is 3


def _crossval_module():
    spec = importlib.util.spec_from_file_location("oct_crossval", REPO / "scripts" / "oct_crossval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _predictions(dataset_dir: Path, out: Path) -> list[dict[str, str]]:
    bundle_runner.run_workflow(BUNDLE, [CONFIGS / "inference.yaml"], "infer", dataset_dir=str(dataset_dir),
                               output_dir=str(out), num_workers=0)
    return bundle_runner.read_csv(out / "predictions.csv")


def test_default_inference_classifies_synthetic_bscans(tmp_path):
    from common.synthetic.oct import generate_oct

    config = {"image_size": [496, 512], "splits": {"train": dict.fromkeys(CLASSES, 0), "test": dict.fromkeys(CLASSES, 3)},
              "scans_per_patient": [1, 2], "write_masks": False}
    data = Path(generate_oct(tmp_path / "data", config=config, seed=3))
    rows = _predictions(data / "OCT2017" / "test", tmp_path / "out")
    assert len(rows) == 12 and not any(r["error"] for r in rows)
    # pre-trained on the calibrated generator's B-scans, then fine-tuned on real ones
    truth = [Path(r["file"]).name.split("-")[0] for r in rows]
    assert sum(t == r["call"] for t, r in zip(truth, rows)) >= MIN_SYNTHETIC_CORRECT
    group = {"CNV": "urgent", "DME": "urgent", "DRUSEN": "routine", "NORMAL": "observation"}
    for r in rows:
        p = np.array([float(r[f"p_{c}"]) for c in CLASSES])
        assert np.all(p >= 0) and p.sum() == pytest.approx(1.0, abs=1e-4)
        assert r["call"] == CLASSES[int(p.argmax())]
        assert float(r["p_urgent"]) == pytest.approx(p[0] + p[1], abs=1e-4)
        assert r["referral"] in group.values()


def _fake_files() -> list[str]:
    rng = random.Random(0)
    files = []
    for cls in CLASSES:
        for _ in range(rng.randint(4, 9)):
            patient = rng.randint(1000000, 9999999)
            files += [f"{cls}/{cls}-{patient}-{n}.jpeg" for n in range(1, rng.randint(2, 4))]
    files += ["DME/DME-1234567-1.jpeg", "DME/DME-1234567-2.jpeg", "CNV/CNV-1234567-9.jpeg"]  # one patient, two classes
    return files


def _check_folds(folds: dict, files: list[str], module) -> None:
    assert sorted(f for fold in folds.values() for f in fold["files"]) == sorted(files)  # every file once
    seen: dict[str, str] = {}
    for name, fold in folds.items():
        patients = {module.parse_name(f)[1] for f in fold["files"]}
        assert patients == set(fold["patients"])
        for p in patients:
            assert seen.setdefault(p, name) == name, f"patient {p} in folds {seen[p]} and {name}"
        assert {module.parse_name(f)[0] for f in fold["files"]} == set(CLASSES), name


def test_fold_assignment_keeps_patients_whole_and_every_class_in_every_fold():
    module = _crossval_module()
    files = _fake_files()
    folds = module.assign_folds(files, n_folds=4)
    assert list(folds) == ["A", "B", "C", "D"]
    _check_folds(folds, files, module)
    assert "oct-1234567" in folds["A"]["patients"] + folds["B"]["patients"] + folds["C"]["patients"] + folds["D"]["patients"]
    shuffled = list(files)
    random.Random(1).shuffle(shuffled)
    assert module.assign_folds(shuffled, n_folds=4) == folds  # deterministic, whatever the order
    sizes = [len(f["patients"]) for f in folds.values()]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="no patient of"):
        module.assign_folds([f for f in files if not f.startswith("CNV/")] + ["CNV/CNV-1-1.jpeg"], n_folds=4)
    # the folds kept in the repository
    spec = json.loads((BUNDLE / "docs" / "oct2017_samples48_folds.json").read_text())
    kept = [f for fold in spec["folds"].values() for f in fold["files"]]
    assert len(kept) == 48
    _check_folds(spec["folds"], kept, module)
    assert module.assign_folds(kept, n_folds=len(spec["folds"])) == spec["folds"]


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_DATA / "CNV").is_dir(), reason=f"the 48 real OCT2017 B-scans are not at {REAL_DATA}")
def test_real_scans_through_inference_yaml(tmp_path):
    from common.metrics.classification import roc_auc

    rows = sorted(_predictions(REAL_DATA, tmp_path / "out"), key=lambda r: Path(r["file"]).name)
    assert len(rows) == 48 and not any(r["error"] for r in rows)
    calls = "".join({"CNV": "C", "DME": "M", "DRUSEN": "D", "NORMAL": "N"}[r["call"]] for r in rows)
    assert sum(a == b for a, b in zip(calls, REAL_CALLS)) >= 47, f"calls {calls}, recorded {REAL_CALLS}"
    truth = [Path(r["file"]).name.split("-")[0] for r in rows]
    correct = sum(t == r["call"] for t, r in zip(truth, rows))
    assert correct >= MIN_REAL_CORRECT, f"{correct} of 48 right (chance is 12)"
    urgent = np.array([t in ("CNV", "DME") for t in truth], dtype=int)
    assert roc_auc(urgent, np.array([float(r["p_urgent"]) for r in rows])) >= MIN_REAL_URGENT_AUROC
