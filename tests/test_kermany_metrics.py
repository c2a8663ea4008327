"""Kermany's penalty-weighted error for OCT referral."""

import numpy as np
import pytest

from common.metrics.kermany import KERMANY_PENALTY, weighted_error


def test_weighted_error_penalises_missed_urgent_cases_most():
    truth = np.array([0, 1, 2, 3] * 25)  # CNV, DME, DRUSEN, NORMAL
    assert weighted_error(truth, truth) == 0.0
    missed_urgent = truth.copy()
    missed_urgent[0] = 3  # one CNV called NORMAL
    over_referred = truth.copy()
    over_referred[3] = 0  # one NORMAL called CNV
    within_group = truth.copy()
    within_group[0] = 1  # one CNV called DME: still urgent
    errors = [weighted_error(truth, p) for p in (missed_urgent, over_referred, within_group)]
    assert errors == pytest.approx([4 / 100, 2 / 100, 1 / 100])
    # with all-ones penalties it is the plain error rate
    ones = np.ones((4, 4)) - np.eye(4)
    assert weighted_error(truth, missed_urgent, ones) == pytest.approx(0.01)


def test_penalty_matrix_shape_and_diagonal():
    assert KERMANY_PENALTY.shape == (4, 4) and not np.diag(KERMANY_PENALTY).any()
    assert (KERMANY_PENALTY[:2, 2:] > KERMANY_PENALTY[2:, :2]).all()  # missing urgent > over-referring
    with pytest.raises(ValueError):
        weighted_error([0], [0], np.ones((2, 3)))
    assert np.isnan(weighted_error([], []))
