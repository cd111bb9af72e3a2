"""Bad inputs raise errors whose messages name the argument (issue 3, point 6)."""

from __future__ import annotations

import numpy as np
import pytest

import tdntk
from tdntk import Schedule, SoftTarget, Transitions

X = np.zeros((4, 2))
R = np.zeros(4)
G = np.full(4, 0.9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=np.zeros(4)), r"Transitions\.x: expected a 2-D array"),
        (dict(reward=np.zeros(3)), r"Transitions\.reward: has 3 rows"),
        (dict(reward=np.array([0, np.nan, 0, 0])), r"Transitions\.reward: contains 1 NaN"),
        (dict(x_next=np.zeros((4, 3))), r"Transitions\.x_next: has 3 features"),
        (dict(x_next=np.zeros((5, 2))), r"Transitions\.x_next: has 5 rows"),
        (dict(discount=np.array([0.9, 1.1, 0.9, 0.9])), r"Transitions\.discount: every"),
        (dict(discount=np.array([0.9, -0.1, 0.9, 0.9])), r"Transitions\.discount: every"),
        (dict(x_next=np.zeros((4, 2, 2))), r"Transitions\.next_weights: required"),
        (
            dict(x_next=np.zeros((4, 2, 2)), next_weights=np.full((4, 3), 1 / 3)),
            r"Transitions\.next_weights: expected shape \(4, 2\)",
        ),
        (
            dict(x_next=np.zeros((4, 2, 2)), next_weights=np.full((4, 2), 0.6)),
            r"Transitions\.next_weights: each row must sum to 1",
        ),
        (
            dict(x_next=np.zeros((4, 2, 2)), next_weights=np.tile([1.5, -0.5], (4, 1))),
            r"Transitions\.next_weights: probabilities must be >= 0",
        ),
        (dict(x=[["a", "b"]] * 4), r"Transitions\.x: cannot convert"),
    ],
)
def test_transitions_validation(kwargs, match):
    args = dict(x=X, reward=R, x_next=X, discount=G) | kwargs
    with pytest.raises(ValueError, match=match):
        Transitions(**args)


def test_transitions_are_read_only_float64():
    data = Transitions(X.astype(np.float32), R, X, G)
    assert data.x.dtype == np.float64 and data.x_next.shape == (4, 1, 2)
    with pytest.raises(ValueError):
        data.reward[0] = 1.0


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan")])
def test_gamma_outside_unit_interval(gamma):
    with pytest.raises(ValueError, match="gamma must lie in"):
        Transitions.from_gamma(X, R, X, gamma)


def test_discounts_mask_terminal_transitions():
    np.testing.assert_array_equal(tdntk.discounts(0.9, [True, False]), [0.0, 0.9])


@pytest.fixture
def model():
    data = Transitions(np.eye(4, 2), R + 1, np.eye(4, 2)[::-1], G)
    return tdntk.TDNTK(tdntk.MLP(1, 8), data, Schedule(0.01))


@pytest.mark.parametrize(
    "t, match", [(-1.0, "t must be >= 0"), (np.nan, "t must be >= 0"), ([[1.0]], "1-D")]
)
def test_bad_times(model, t, match):
    with pytest.raises(ValueError, match=match):
        model.predict(np.zeros((2, 2)), t)


def test_fractional_steps_in_discrete_time():
    data = Transitions(np.eye(4, 2), R, np.eye(4, 2), G)
    model = tdntk.TDNTK(tdntk.MLP(1, 8), data, Schedule(0.01, time="discrete"))
    with pytest.raises(ValueError, match="whole numbers of steps"):
        model.predict(np.zeros((2, 2)), 1.5)


@pytest.mark.parametrize(
    "x_test, match",
    [
        (np.zeros((3, 5)), r"x_test must have shape \(m, 2\)"),
        (np.zeros(2), r"x_test must have shape"),
        (np.array([[0.0, np.inf]]), "x_test contains NaN"),
    ],
)
def test_bad_test_inputs(model, x_test, match):
    with pytest.raises(ValueError, match=match):
        model.predict(x_test, 1.0)


@pytest.mark.parametrize("tau", [-0.1, float("inf")])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau must be finite and >= 0"):
        SoftTarget(tau)


def test_discrete_tau_above_one():
    data = Transitions(X, R, X, G)
    with pytest.raises(ValueError, match="tau must be <= 1"):
        tdntk.TDNTK(tdntk.MLP(1, 8), data, Schedule(0.01, SoftTarget(2.0), time="discrete"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(learning_rate=0.0), "learning_rate must be finite and > 0"),
        (dict(learning_rate=-1.0), "learning_rate must be finite and > 0"),
        (dict(time="euler"), "time must be one of"),
        (dict(loss="max"), "loss must be one of"),
        (dict(target=0.1), "target must be None or a SoftTarget"),
        (dict(learning_rate=True), "learning_rate must be finite and > 0"),
    ],
)
def test_bad_schedule(kwargs, match):
    args = dict(learning_rate=0.01) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        Schedule(**args)


def test_model_needs_a_schedule():
    with pytest.raises(TypeError, match="schedule must be a Schedule"):
        tdntk.TDNTK(tdntk.MLP(1, 8), Transitions(X, R, X, G), 0.01)


def test_bad_initial_outputs(model):
    with pytest.raises(ValueError, match="q0_x must have 4 values"):
        model.predict_from_init(np.zeros((2, 2)), 1.0, np.zeros(2), np.zeros(3), np.zeros(4))


def test_data_and_kernels_types():
    with pytest.raises(TypeError, match="data must be a Transitions"):
        tdntk.TDNTK(tdntk.MLP(1, 8), {"x": X}, Schedule(0.01))
    with pytest.raises(TypeError, match="kernels must be an MLP"):
        tdntk.TDNTK(3, Transitions(X, R, X, G), Schedule(0.01))
