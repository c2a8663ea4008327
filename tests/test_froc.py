"""FROC / CPM on hand-made cases whose answers are worked out by hand (LUNA16 rules)."""

from __future__ import annotations

import numpy as np
import pytest

from common.metrics.froc import CPM_FP_RATES, ScanDetections, froc, match_scan


def scan(pred, scores, gt, diam, ignore=None):
    return ScanDetections(
        np.array(pred, float).reshape(-1, 3), scores, np.array(gt, float).reshape(-1, 3), diam, ignore
    )


def test_perfect_detection_duplicates_are_not_false_positives():
    # one 10 mm nodule; the second hit on it is neither TP nor FP; one true FP with a lower score
    s = scan([[1, 0, 0], [2, 0, 0], [20, 0, 0]], [0.9, 0.5, 0.4], [[0, 0, 0]], [10.0])
    nodule_scores, fp_scores, best = match_scan(s)
    assert nodule_scores.tolist() == [0.9]
    assert fp_scores.tolist() == [0.4]
    assert best.tolist() == [0]
    result = froc([s])
    assert result.cpm == pytest.approx(1.0)
    assert result.num_detected == 1


def test_hit_is_within_radius_inclusive():
    s = scan([[3.0, 0, 0], [3.01, 0, 0]], [0.8, 0.9], [[0, 0, 0]], [6.0])
    nodule_scores, fp_scores, _ = match_scan(s)
    assert nodule_scores.tolist() == [0.8]  # exactly on the radius: a hit
    assert fp_scores.tolist() == [0.9]  # just outside: a false positive


def test_worked_example_cpm():
    # scan A: 6 mm nodule at the origin; FP (outside the 3 mm radius) at 0.9, hit at 0.4
    # scan B: 10 mm nodule missed; FPs at 0.7 and 0.3
    a = scan([[3.5, 0, 0], [2.9, 0, 0]], [0.9, 0.4], [[0, 0, 0]], [6.0])
    b = scan([[0, 0, 0], [10, 10, 10]], [0.7, 0.3], [[50, 50, 50]], [10.0])
    r = froc([a, b])
    # thresholds 0.9, 0.7, 0.4, 0.3 -> (FPs/scan, sensitivity) = (0.5, 0), (1, 0), (1, 0.5), (1.5, 0.5)
    assert r.fps_per_scan == [0.0, 0.5, 1.0, 1.0, 1.5]
    assert r.sensitivity == [0.0, 0.0, 0.0, 0.5, 0.5]
    expected = [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]
    assert r.sensitivity_at == pytest.approx(expected)
    assert r.cpm == pytest.approx(np.mean(expected))
    assert r.num_nodules == 2 and r.num_scans == 2


def test_interpolation_between_operating_points():
    # 4 scans, one nodule each; hits at 0.9 and 0.5; FPs at 0.8 (1 FP -> 0.25/scan) and 0.4 (0.5/scan)
    scans = [
        scan([[0, 0, 0], [99, 0, 0]], [0.9, 0.8], [[0, 0, 0]], [8.0]),
        scan([[0, 0, 0], [99, 0, 0]], [0.5, 0.4], [[0, 0, 0]], [8.0]),
        scan([], [], [[0, 0, 0]], [8.0]),
        scan([], [], [[0, 0, 0]], [8.0]),
    ]
    r = froc(scans)
    # points: (0, .25) (.25, .25) (.25, .5) (.5, .5); at 1/8 FP/scan interpolate (0, .25)-(.25, .5)
    assert r.sensitivity_at[0] == pytest.approx(0.375)
    assert r.sensitivity_at[1:] == pytest.approx([0.5] * 6)


def test_ignored_findings_neither_count_nor_make_false_positives():
    # a 40 mm mass (ignored) and a 4 mm nodule ignored by a size cut; only the 8 mm nodule counts
    s = scan(
        [[100, 0, 0], [0, 50, 0], [0, 0, 0]],
        [0.95, 0.9, 0.6],
        [[100, 0, 0], [0, 50, 0], [0, 0, 0]],
        [40.0, 4.0, 8.0],
        ignore=[True, True, False],
    )
    nodule_scores, fp_scores, _ = match_scan(s)
    assert nodule_scores.tolist() == [0.6]
    assert fp_scores.size == 0
    assert froc([s]).cpm == pytest.approx(1.0)


def test_scan_without_nodules_adds_false_positives_per_scan():
    a = scan([[0, 0, 0]], [0.9], [[0, 0, 0]], [10.0])
    empty = scan([[5, 5, 5]] * 8, np.linspace(0.95, 0.2, 8), [], [])
    r = froc([a, empty])
    # the FP at 0.95 comes first: (0.5 FP/scan, 0), then the hit at 0.9: (0.5, 1); the curve from (0, 0)
    # rises linearly to (0.5, 1), so 1/8 FP/scan reads 0.25
    assert r.sensitivity_at[0] == pytest.approx(0.25)
    assert r.sensitivity_at[3] == pytest.approx(1.0)
    assert r.fp_rates == list(CPM_FP_RATES)


def test_no_detections_at_all():
    r = froc([scan([], [], [[0, 0, 0]], [10.0])])
    assert r.cpm == 0.0 and r.num_detected == 0


def test_no_counted_nodules_gives_nan():
    r = froc([scan([[0, 0, 0]], [0.5], [], [])])
    assert np.isnan(r.cpm)
