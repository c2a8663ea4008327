import numpy as np

from common.metrics.classification import (
    bootstrap_ci,
    confusion_matrix,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
)


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # rounding creates ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert abs(roc_auc(y, s) - pairwise) < 1e-12
    fpr, tpr, _ = roc_curve(y, s)
    assert abs(np.trapezoid(tpr, fpr) - pairwise) < 1e-12
    assert np.isnan(roc_auc(np.ones(5), np.arange(5)))


def test_sens_spec_confusion():
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([1, 0, 1, 0, 1])
    assert sensitivity_specificity(y, p) == (2 / 3, 1 / 2)
    assert confusion_matrix(y, p, 2).tolist() == [[1, 1], [1, 2]]


def test_bootstrap_ci_contains_value_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 2, 60)
    big = rng.integers(0, 2, 2000)
    r_small = bootstrap_ci(roc_auc, small, small + rng.normal(0, 0.8, small.size), n_boot=300)
    r_big = bootstrap_ci(roc_auc, big, big + rng.normal(0, 0.8, big.size), n_boot=300)
    for r in (r_small, r_big):
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    assert (r_big["ci_high"] - r_big["ci_low"]) < (r_small["ci_high"] - r_small["ci_low"])
