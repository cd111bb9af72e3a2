"""Monte Carlo ground truth and the CartPole policy, against Gymnasium's own environment."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from tdntk.envs.cartpole import (
    CartPolePhysics,
    episode_returns,
    initial_states,
    monte_carlo_returns,
)
from tdntk.experiments.cartpole_policy import LinearPolicy, train_cartpole_policy

S0 = np.array([0.01, -0.02, 0.03, 0.015])


def _gym_episode(state, actions_fn, max_steps=10_000):
    """Step Gymnasium's CartPoleEnv from `state` until terminated: the number of steps."""
    env = gymnasium.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    env.state = np.array(state, dtype=np.float64)
    obs = env.state.astype(np.float32)
    for t in range(max_steps):
        obs, reward, terminated, _, _ = env.step(actions_fn(t, obs))
        assert reward == 1.0
        if terminated:
            return t + 1
    raise AssertionError("episode did not terminate")


def test_physics_step_matches_gymnasium():
    # same equations, vectorised: agree to round-off (1e-12) along a random trajectory
    env = gymnasium.make("CartPole-v1").unwrapped
    env.reset(seed=1)
    physics = CartPolePhysics.from_env(env)
    rng = np.random.default_rng(0)
    state = env.state.copy()
    for _ in range(40):
        a = int(rng.integers(2))
        env.state = state.copy()
        env.step(a)
        nxt, done = physics.step(state[None], np.array([a]))
        np.testing.assert_allclose(nxt[0], env.state, rtol=0, atol=1e-12)
        state = env.state.copy()
        if done[0]:
            break


def test_always_left_return_is_the_episode_length():
    # a deterministic policy: the return (gamma = 1) is the number of steps Gymnasium takes
    length = _gym_episode(S0, lambda t, obs: 0)
    assert 5 < length < 100  # pushing left topples the pole within a few dozen steps
    left = lambda obs: np.zeros(np.shape(obs)[:-1], dtype=np.int64)  # noqa: E731
    mc = monte_carlo_returns(left, S0[None], gamma=1.0, rollouts=3)
    assert mc.mean[0] == length
    assert mc.std[0] == 0.0 and mc.cut_fraction == 0.0
    # gamma < 1: the geometric sum (1 - gamma^L) / (1 - gamma), to round-off
    mc = monte_carlo_returns(left, S0[None], gamma=0.9)
    assert mc.mean[0] == pytest.approx((1 - 0.9**length) / 0.1, rel=1e-12)
    # a horizon shorter than the episode cuts it there
    mc = monte_carlo_returns(left, S0[None], gamma=1.0, horizon=length - 2)
    assert mc.mean[0] == length - 2 and mc.cut_fraction == 1.0


def test_first_action_is_taken_before_the_policy():
    # Q(s, right) of always-left: Gymnasium with actions (1, 0, 0, ...)
    length = _gym_episode(S0, lambda t, obs: 1 if t == 0 else 0)
    left = lambda obs: np.zeros(np.shape(obs)[:-1], dtype=np.int64)  # noqa: E731
    mc = monte_carlo_returns(left, S0[None], actions=np.array([1]))
    assert mc.mean[0] == length
    assert length != _gym_episode(S0, lambda t, obs: 0)  # the first action matters here


def test_stochastic_returns_agree_with_gymnasium_rollouts():
    # uniform random policy from one state: vectorised MC vs 1500 Gymnasium episodes;
    # the two means differ by less than 4 combined standard errors
    policy = LinearPolicy(np.zeros((2, 4)), np.zeros(2), epsilon=1.0, seed=0)
    mc = monte_carlo_returns(policy, S0[None], rollouts=4000, seed=1)
    rng = np.random.default_rng(2)
    lengths = np.array([_gym_episode(S0, lambda t, o: int(rng.integers(2))) for _ in range(1500)])
    se = np.hypot(mc.std_error[0], lengths.std(ddof=1) / np.sqrt(lengths.size))
    assert abs(mc.mean[0] - lengths.mean()) < 4 * se
    assert mc.std_error[0] == pytest.approx(mc.std[0] / np.sqrt(4000))


def test_linear_policy_probabilities_and_sampling():
    rng = np.random.default_rng(0)
    policy = LinearPolicy(rng.normal(size=(2, 4)), rng.normal(size=2), epsilon=0.3, seed=1)
    obs = rng.normal(size=(5, 4))
    probs = policy.action_probs(obs)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-15)
    greedy = policy.greedy(obs)
    np.testing.assert_allclose(probs[np.arange(5), greedy], 0.85, atol=1e-15)  # 1 - .3 + .3/2
    np.testing.assert_allclose(policy.action_probs(obs[0]), probs[0])
    # sampled frequencies of one observation: 20k draws, se ~ 2.5e-3, allow 5 se
    draws = policy(np.repeat(obs[:1], 20_000, axis=0))
    assert abs(np.mean(draws == greedy[0]) - 0.85) < 5 * np.sqrt(0.85 * 0.15 / 20_000)
    assert isinstance(policy(obs[0]), int)


def test_trained_policy_is_neither_random_nor_perfect():
    result = train_cartpole_policy(seed=0, eval_episodes=200)
    random = episode_returns(LinearPolicy(np.zeros((2, 4)), np.zeros(2), 1.0), 200, seed=3)
    assert result.returns.mean() > 3 * random.mean()  # uniform random: ~22 steps
    assert result.returns.mean() < 400 and result.returns.std() > 10
    again = train_cartpole_policy(seed=0, eval_episodes=200)
    np.testing.assert_array_equal(again.policy.weights, result.policy.weights)  # seeded


def test_initial_states_follow_the_reset_distribution():
    states = initial_states(10_000, seed=0)
    assert states.shape == (10_000, 4)
    assert np.all(np.abs(states) <= 0.05)
    # U(-0.05, 0.05) has std 0.05 / sqrt(3); 10k draws -> ~1 % relative
    np.testing.assert_allclose(states.std(axis=0), 0.05 / np.sqrt(3), rtol=0.03)
