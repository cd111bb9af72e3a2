"""The toy chain environment (paper sec. 5.1, app. D.1): dynamics, rewards, termination, truth."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from tdntk.envs import TOY_CHAIN_ID, ToyChainEnv, rollout_value, toy_transitions, true_values
from tdntk.envs.toy import dataset_states


def test_registered_env_passes_gymnasium_checker_without_warnings():
    env = gym.make(TOY_CHAIN_ID)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    assert isinstance(env.unwrapped, ToyChainEnv)
    assert env.observation_space.shape == (1,)
    assert env.action_space.n == 1


def test_default_episode_from_zero_pays_once_and_ends_after_five_steps():
    # 0 -> 0.25 -> 0.5 -> 0.75 -> 1.0 (pays 1) -> 1.25 (terminates, pays 0); exact in binary
    env = gym.make(TOY_CHAIN_ID)
    obs, _ = env.reset(seed=0)
    states, rewards, done = [obs[0]], [], False
    while not done:
        obs, r, done, truncated, _ = env.step(0)
        assert not truncated
        states.append(obs[0])
        rewards.append(r)
    assert states == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert rewards == [0.0, 0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "s, reward, terminated",
    [
        (0.0, 0.0, False),
        (0.5, 0.0, False),
        (0.7, 0.0, False),  # s' = 0.95 < 1
        (0.75, 1.0, False),  # s' = 1: reaching 1 counts as crossing
        (0.9375, 1.0, False),
        (0.99, 1.0, False),
        (1.0, 0.0, True),  # acting from s >= 1 terminates and pays 0
        (1.1, 0.0, True),
        (1.25, 0.0, True),
        (2.5, 0.0, True),
        (-0.5, 0.0, False),
    ],
)
def test_step_rules_match_the_documented_reading(s, reward, terminated):
    env = ToyChainEnv(min_state=-1.0)
    env.reset(options={"state": s})
    obs, r, term, trunc, info = env.step(0)
    assert obs.shape == (1,) and obs.dtype == np.float64
    assert obs[0] == pytest.approx(s + 0.25, abs=1e-15)
    assert (r, term, trunc) == (reward, terminated, False)


def test_true_values_from_rollouts_match_the_papers_value_function():
    # independent route: the paper's stated V(s) = 1 for s < 1, 0 otherwise (gamma = 1), exact
    s = np.linspace(-0.5, 2.5, 301)
    np.testing.assert_array_equal(true_values(s), np.where(s < 1.0, 1.0, 0.0))


def test_discounted_rollout_counts_steps_to_the_crossing():
    # from s = 0 the reward comes on step 4, so V = gamma^3; from 0.8 on step 1 (V = 1)
    env = ToyChainEnv()
    assert rollout_value(env, 0.0, gamma=0.5) == pytest.approx(0.125, abs=1e-15)
    assert rollout_value(env, 0.8, gamma=0.5) == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(true_values([0.0, 0.3], gamma=0.9), [0.9**3, 0.9**2], atol=1e-15)


def test_dataset_is_one_env_step_from_each_of_21_states():
    states = dataset_states()
    np.testing.assert_array_equal(states, np.arange(21) / 16)  # linspace(0, 1.25, 21), exact
    data = toy_transitions(states, gamma=1.0)
    assert (data.n, data.k, data.input_dim) == (21, 1, 1)
    np.testing.assert_array_equal(data.x[:, 0], states)
    np.testing.assert_array_equal(data.x_next_flat[:, 0], states + 0.25)
    np.testing.assert_array_equal(np.flatnonzero(data.reward), [12, 13, 14, 15])  # s in [.75, 1)
    np.testing.assert_array_equal(np.flatnonzero(data.discount == 0), [16, 17, 18, 19, 20])
    np.testing.assert_array_equal(data.discount[:16], 1.0)


def test_true_values_satisfy_the_datasets_bellman_equations():
    # V(X) = r + G V(X'') on every transition (exact: values are 0 or 1)
    data = toy_transitions(dataset_states(), gamma=1.0)
    v_x = true_values(data.x[:, 0])
    v_next = true_values(data.x_next_flat[:, 0])
    np.testing.assert_array_equal(v_x, data.reward + data.bellman(v_next))


def test_bad_states_and_misuse_raise_with_context():
    env = ToyChainEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    with pytest.raises(ValueError, match="min_state"):
        env.reset(options={"state": -0.1})
    with pytest.raises(ValueError, match="one number"):
        env.reset(options={"state": "a"})
    env.reset(options={"state": 1.0})
    with pytest.raises(ValueError, match="action"):
        env.step(1)
    env.step(0)
    with pytest.raises(RuntimeError, match="ended"):
        env.step(0)
    with pytest.raises(ValueError, match="min_state <= max_state"):
        ToyChainEnv(min_state=1.0, max_state=0.0)
