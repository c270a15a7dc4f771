import pytest

from crossback.models.cl_metrics import average_accuracy, backward_transfer, forgetting, forward_transfer, summarize

# Hand-worked example, 3 tasks.
R = [
    [0.90, None, None],
    [0.80, 0.70, None],
    [0.60, 0.75, 0.50],
]


def test_average_accuracy_is_mean_of_last_row():
    assert average_accuracy(R) == pytest.approx((0.60 + 0.75 + 0.50) / 3)


def test_backward_transfer_hand_computed():
    # ((0.60 - 0.90) + (0.75 - 0.70)) / 2 = -0.125
    assert backward_transfer(R) == pytest.approx(-0.125)


def test_forgetting_uses_best_earlier_accuracy():
    # task 0: max(0.90, 0.80) - 0.60 = 0.30 ; task 1: max(0.70) - 0.75 = -0.05 ; mean 0.125
    assert forgetting(R) == pytest.approx(0.125)


def test_forward_transfer_against_scratch_skips_first_task():
    # ((0.70 - 0.65) + (0.50 - 0.60)) / 2 = -0.025
    assert forward_transfer(R, [0.90, 0.65, 0.60]) == pytest.approx(-0.025)


def test_zero_forgetting_matrix():
    flat = [[0.5, None], [0.5, 0.9]]
    s = summarize(flat)
    assert s["bwt"] == 0.0 and s["forgetting"] == 0.0 and s["forward_transfer"] is None
    assert s["average_accuracy"] == pytest.approx(0.7)


def test_single_task_has_no_transfer_terms():
    assert backward_transfer([[0.4]]) is None and forgetting([[0.4]]) is None


def test_malformed_matrix_is_rejected():
    with pytest.raises(ValueError, match="row 1"):
        average_accuracy([[0.5, None], [None, 0.5]])
    with pytest.raises(ValueError, match="from-scratch"):
        forward_transfer(R, [0.1])
