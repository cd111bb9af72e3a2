"""Datasets: OfflineData validation, the .npz format, collect, features, to_transitions, Minari.

References are independent of the code under test: the environments' own
physics and reward formulas, hand-built encodings, and Minari's DataCollector.
"""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest

from tdntk.datasets import (
    Features,
    OfflineData,
    collect,
    load_minari,
    load_npz,
    save_npz,
    to_transitions,
)
from tdntk.datasets.policies import load_policy

CARTPOLE_THETA_LIMIT = 12 * 2 * np.pi / 360  # gymnasium's CartPole termination angle
CARTPOLE_X_LIMIT = 2.4


def push_away(obs):
    """Deterministic CartPole policy: push in the direction of the cart position."""
    return int(obs[0] > 0)


def small_cartpole(n=48, seed=3):
    """CartPole with a time limit of 10 steps: both terminated and truncated episodes."""
    env = gymnasium.make("CartPole-v1", max_episode_steps=10)
    return collect(env, push_away, n, seed=seed)


class ProbsPolicy:
    """A stochastic CartPole policy whose probabilities depend on the state."""

    def __call__(self, obs):
        return int(np.argmax(self.action_probs(obs)))

    def action_probs(self, obs):
        p1 = 1.0 / (1.0 + np.exp(-10.0 * obs[2]))
        return np.array([1.0 - p1, p1])


def _arrays(n=5):
    rng = np.random.default_rng(0)
    return dict(
        observations=rng.normal(size=(n, 3)),
        actions=rng.integers(0, 2, n),
        rewards=rng.normal(size=n),
        next_observations=rng.normal(size=(n, 3)),
        terminated=np.zeros(n, bool),
        truncated=np.r_[np.zeros(n - 1, bool), True],
        next_actions=rng.integers(0, 2, n),
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rewards=np.r_[np.nan, np.zeros(4)]), r"OfflineData\.rewards: contains NaN"),
        (dict(rewards=np.zeros(4)), r"OfflineData\.rewards: has 4 rows but observations has 5"),
        (dict(next_observations=np.zeros((5, 2))), r"next_observations: has 2 features"),
        (dict(terminated=np.full(5, 2)), r"OfflineData\.terminated: expected booleans"),
        (dict(actions=np.full(5, 0.5)), r"OfflineData\.actions: a 1-D action array"),
        (dict(next_actions=np.zeros((5, 1))), r"OfflineData\.next_actions: expected \(n,\)"),
        (dict(next_action_probs=np.full((5, 2), 0.4)), r"next_action_probs: each row must sum"),
        (dict(observations=np.zeros(5)), r"OfflineData\.observations: expected a 2-D"),
        (
            dict(observation_space=gymnasium.spaces.Discrete(4)),
            r"OfflineData\.observation_space: Discrete\(4\) flattens to 4 features",
        ),
        (
            dict(observation_space=gymnasium.spaces.Text(3)),
            r"OfflineData\.observation_space: cannot flatten the space Text",
        ),
    ],
)
def test_offline_data_errors_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        OfflineData(**{**_arrays(), **change})


def test_offline_data_episode_ids_from_flags_and_read_only():
    arrays = _arrays(6)
    arrays["terminated"] = np.array([0, 1, 0, 0, 0, 0], bool)
    arrays["truncated"] = np.array([0, 0, 0, 1, 0, 1], bool)
    data = OfflineData(**arrays)
    # hand-numbered: an episode ends after each terminated/truncated transition
    np.testing.assert_array_equal(data.episode_ids, [0, 0, 1, 1, 2, 2])
    assert data.num_episodes == 3
    with pytest.raises(ValueError):
        data.rewards[0] = 1.0


def test_npz_round_trip_keeps_every_array_and_the_spaces(tmp_path):
    data = collect("CartPole-v1", None, 40, seed=1)
    path = save_npz(tmp_path / "d.npz", data)
    back = load_npz(path)
    for name in (
        "observations", "actions", "rewards", "next_observations", "terminated",
        "truncated", "next_actions", "next_action_probs", "episode_ids",
    ):  # fmt: skip
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name), err_msg=name)
    assert back.action_space == gymnasium.spaces.Discrete(2)
    # the environment's own (unflattened) space is kept, float32 bounds exactly
    cartpole = gymnasium.make("CartPole-v1").observation_space
    assert back.observation_space == cartpole and back.observation_space.dtype == np.float32
    np.testing.assert_array_equal(back.observation_space.high, cartpole.high)
    # the documented names, read with plain NumPy and json (docs/datasets.md, version 2)
    with np.load(path) as raw:
        assert {"observations", "rewards", "action_space_json", "format_version"} <= set(raw.files)
        assert not {"action_n", "observation_low"} & set(raw.files)  # version-1 names
        assert int(raw["format_version"]) == 2
        np.testing.assert_array_equal(raw["rewards"], data.rewards)
        action = json.loads(str(raw["action_space_json"]))
        obs = json.loads(str(raw["observation_space_json"]))
    assert action == {"type": "Discrete", "n": 2, "start": 0, "dtype": "int64"}
    assert obs["type"] == "Box" and obs["shape"] == [4] and obs["dtype"] == "float32"
    np.testing.assert_array_equal(np.asarray(obs["high"], np.float32), cartpole.high)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.pop("rewards"), r"missing required array\(s\) rewards"),
        (lambda a: a.update(rewards=np.r_[a["rewards"][:-1], np.nan]), r"rewards: contains NaN"),
        (lambda a: a.update(actions=a["actions"][:-1]), r"actions: has 4 rows"),
        (lambda a: a.update(extra=np.zeros(5)), r"unknown array\(s\) extra"),
        (lambda a: a.update(format_version=np.asarray(7)), r"format_version 7"),
    ],
)
def test_load_npz_errors_name_the_file_and_the_problem(tmp_path, edit, message):
    arrays = _arrays()
    edit(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message) as info:
        load_npz(path)
    assert "bad.npz" in str(info.value)


def test_load_npz_missing_file_and_not_npz(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="cannot read as a .npz"):
        load_npz(tmp_path / "text.npz")


def test_collect_cartpole_keeps_gymnasium_semantics():
    data = small_cartpole()
    obs, nxt = data.observations, data.next_observations
    # terminated iff the next state leaves CartPole's bounds (the environment's own rule)
    outside = (np.abs(nxt[:, 2]) > CARTPOLE_THETA_LIMIT) | (np.abs(nxt[:, 0]) > CARTPOLE_X_LIMIT)
    np.testing.assert_array_equal(data.terminated, outside)
    assert data.terminated.sum() > 0 and data.truncated.sum() > 0
    np.testing.assert_array_equal(data.rewards, 1.0)
    ends = data.terminated | data.truncated
    # within an episode: s'_i = s_{i+1} and the recorded next action is the next action taken
    inside = ~ends[:-1]
    np.testing.assert_array_equal(nxt[:-1][inside], obs[1:][inside])
    np.testing.assert_array_equal(data.next_actions[:-1][inside], data.actions[1:][inside])
    # after an episode ends the environment was reset (a new start state near 0)
    assert np.all(np.abs(obs[1:][ends[:-1]]) <= 0.05)
    np.testing.assert_array_equal(np.diff(data.episode_ids)[ends[:-1]], 1)
    # the next action is recorded at every episode end too, with the policy
    np.testing.assert_array_equal(data.next_actions[ends], [push_away(s) for s in nxt[ends]])
    # the time limit (10 steps) truncates; the final transition is truncated (data ends)
    lengths = np.bincount(data.episode_ids)
    assert lengths.max() <= 10 and data.truncated[-1]
    for i in np.flatnonzero(ends[:-1]):
        # gymnasium's TimeLimit truncates at 10 steps, even when that step also terminates
        assert data.truncated[i] == (lengths[data.episode_ids[i]] == 10)


def test_collect_is_reproducible_from_the_seed():
    a, b = collect("CartPole-v1", None, 30, seed=4), collect("CartPole-v1", None, 30, seed=4)
    c = collect("CartPole-v1", None, 30, seed=5)
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(a.observations, c.observations)


def test_collect_stochastic_policy_records_its_probabilities():
    policy = ProbsPolicy()
    data = collect("CartPole-v1", policy, 60, seed=0)
    expected = np.array([policy.action_probs(s) for s in data.next_observations])
    np.testing.assert_allclose(data.next_action_probs, expected, rtol=0, atol=1e-15)
    # actions are sampled, not argmax: with these soft probabilities both kinds of choice occur
    greedy = np.array([policy(s) for s in data.observations])
    assert 0 < np.sum(data.actions != greedy) < data.n
    random = collect("CartPole-v1", None, 20, seed=0)
    np.testing.assert_array_equal(random.next_action_probs, 0.5)  # uniform over 2 actions


def test_collect_pendulum_box_actions_and_rewards():
    data = collect("Pendulum-v1", None, 64, seed=0)
    assert data.actions.shape == (64, 1) and data.next_actions.shape == (64, 1)
    assert np.all(np.abs(data.actions) <= 2.0)
    assert data.next_action_probs is None
    # Pendulum's reward: -(theta^2 + 0.1 thetadot^2 + 0.001 u^2), theta from (cos, sin)
    cos, sin, thetadot = data.observations.T
    theta = np.arctan2(sin, cos)
    u = data.actions[:, 0]
    np.testing.assert_allclose(
        data.rewards, -(theta**2 + 0.1 * thetadot**2 + 0.001 * u**2), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(data.next_actions[:-1], data.actions[1:])  # no resets in 64


@pytest.mark.parametrize(
    "env, message",
    [
        ("NoSuchEnv-v0", r"unknown Gymnasium environment 'NoSuchEnv-v0'"),
        ("CartPole-v9", r"unknown Gymnasium environment 'CartPole-v9'"),
        (gymnasium.spaces.Text(4), r"observation space: cannot flatten the space Text"),
        (
            gymnasium.spaces.Sequence(gymnasium.spaces.Discrete(2)),
            r"observation space: cannot flatten the space Sequence",
        ),
        (
            gymnasium.spaces.Tuple([gymnasium.spaces.Discrete(2), gymnasium.spaces.Text(2)]),
            r"observation space: cannot flatten the space Text",
        ),
    ],
)
def test_collect_bad_environment(env, message):
    if isinstance(env, gymnasium.spaces.Space):
        env = _SpaceEnv(env)
    with pytest.raises(ValueError, match=message):
        collect(env, None, 5)


class _SpaceEnv(gymnasium.Env):
    """An environment with a given observation space (refused before any step)."""

    action_space = gymnasium.spaces.Discrete(2)

    def __init__(self, observation_space):
        self.observation_space = observation_space

    def reset(self, *, seed=None, options=None):
        raise AssertionError("collect must refuse the space before resetting")

    def step(self, action):
        raise AssertionError("collect must refuse the space before stepping")


def test_collect_bad_policy_output_names_the_step():
    with pytest.raises(ValueError, match=r"policy at step 0: action 7 is outside Discrete\(2\)"):
        collect("CartPole-v1", lambda obs: 7, 5)


def test_load_policy_errors_and_file_form(tmp_path):
    (tmp_path / "pol.py").write_text("def act(obs):\n    return 1\nvalue = 3\n")
    assert load_policy(f"{tmp_path / 'pol.py'}:act")(np.zeros(4)) == 1
    assert load_policy("numpy:argmax")(np.array([0, 2, 1])) == 1
    for spec, message in [
        ("no_colon", "expected 'PKG.MODULE:FUNC'"),
        ("surely_missing_pkg.mod:f", "cannot import 'surely_missing_pkg.mod'"),
        ("numpy:no_such_function", "has no attribute 'no_such_function'"),
        (f"{tmp_path / 'pol.py'}:value", "is a int, not a callable"),
        (f"{tmp_path / 'missing.py'}:act", "does not exist"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_policy(spec)


def test_features_encodings_against_hand_computation():
    box = gymnasium.spaces.Box(-np.inf, np.inf, (2,))
    f = Features.from_spaces(box, gymnasium.spaces.Discrete(3, start=1))
    x = f.encode(np.array([[0.5, -1.0], [2.0, 3.0]]), np.array([3, 1]))
    np.testing.assert_array_equal(x, [[0.5, -1.0, 0, 0, 1], [2.0, 3.0, 1, 0, 0]])
    with pytest.raises(ValueError, match=r"actions must lie in \[1, 4\)"):
        f.encode(np.zeros((1, 2)), np.array([0]))
    act = gymnasium.spaces.Box(np.array([-2.0, 0.0]), np.array([2.0, 1.0]), dtype=np.float64)
    scaled = Features.from_spaces(box, act).encode(np.zeros((2, 2)), [[-2.0, 0.0], [2.0, 0.25]])
    np.testing.assert_allclose(scaled[:, 2:], [[-1.0, -1.0], [1.0, -0.5]], atol=1e-15)
    raw = Features.from_spaces(box, act, scale_actions=False).encode(np.zeros((1, 2)), [[1.5, 0.2]])
    np.testing.assert_array_equal(raw[:, 2:], [[1.5, 0.2]])
    # standardisation: observations and next observations together get mean 0, std 1
    data = small_cartpole()
    std = Features.from_spaces(data.observation_space, data.action_space, standardize=data)
    both = np.concatenate([data.observations, data.next_observations])
    z = std.encode_observations(both)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-12)


def test_to_transitions_discounts_and_next_inputs_at_episode_ends():
    data = small_cartpole()
    features = Features.from_spaces(data.observation_space, data.action_space, standardize=data)
    gamma = 0.9
    # behaviour policy from recorded next actions (deterministic data: k = 1)
    tr = to_transitions(data, features, gamma)
    expected = np.where(data.terminated, 0.0, gamma)  # truncated keeps gamma
    np.testing.assert_array_equal(tr.discount, expected)
    cut = data.truncated & ~data.terminated
    assert cut.sum() >= 1 and np.all(tr.discount[cut] == gamma)
    assert np.all(tr.discount[data.terminated & data.truncated] == 0.0)  # terminal wins
    # next input of a truncated transition: (s', policy(s')) encoded by hand
    obs_z = (data.next_observations - features.obs_mean) / features.obs_scale
    one_hot = np.eye(2)[[push_away(s) for s in data.next_observations]]
    np.testing.assert_allclose(tr.x_next[:, 0], np.hstack([obs_z, one_hot]), atol=1e-15)
    # a stochastic target policy: every action, weighted by its probabilities
    policy = ProbsPolicy()
    st = to_transitions(data, features, gamma, policy=policy)
    assert st.k == 2
    np.testing.assert_allclose(
        st.next_weights, [policy.action_probs(s) for s in data.next_observations], atol=1e-15
    )
    np.testing.assert_allclose(st.x_next[:, 1, 4:], np.tile([0.0, 1.0], (data.n, 1)))
    no_next = OfflineData(
        data.observations, data.actions, data.rewards, data.next_observations,
        data.terminated, data.truncated,
    )  # fmt: skip
    with pytest.raises(ValueError, match="neither next_actions nor next_action_probs"):
        to_transitions(no_next, features, gamma)


def _minari_cartpole(dataset_id, policy, n, seed):
    """Collect with Minari's own DataCollector, resetting like `collect` does."""
    import minari

    env = minari.DataCollector(gymnasium.make("CartPole-v1", max_episode_steps=10))
    obs, _ = env.reset(seed=seed)
    for i in range(n):
        obs, _, terminated, truncated, _ = env.step(policy(obs))
        if (terminated or truncated) and i < n - 1:
            obs, _ = env.reset(options={"minari_autoseed": False})  # continue the env's RNG
    env.create_dataset(
        dataset_id=dataset_id, algorithm_name="push_away", author="tdntk tests",
        author_email="tests@tdntk.invalid", code_permalink="tests/test_datasets.py",
        description="tiny CartPole test dataset", eval_env="CartPole-v1",
    )  # fmt: skip
    env.close()


def test_minari_reader_equals_npz(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    _minari_cartpole("cartpole/push-away-v0", push_away, 48, seed=3)
    npz = load_npz(save_npz(tmp_path / "d.npz", small_cartpole(48, seed=3)))
    mini = load_minari("cartpole/push-away-v0", behaviour_policy=push_away)
    for name in (
        "observations", "actions", "rewards", "next_observations", "terminated",
        "truncated", "next_actions", "episode_ids",
    ):  # fmt: skip
        np.testing.assert_array_equal(getattr(mini, name), getattr(npz, name), err_msg=name)
    assert mini.action_space == npz.action_space
    np.testing.assert_array_equal(mini.observation_space.low, npz.observation_space.low)
    # without a behaviour policy the last transition of truncated episodes is dropped
    dropped = load_minari(tmp_path / "minari" / "cartpole" / "push-away-v0")
    keep = ~(npz.truncated & ~npz.terminated)  # a terminated last step needs no next action
    assert dropped.n == int(keep.sum())
    np.testing.assert_array_equal(dropped.observations, npz.observations[keep])
    np.testing.assert_array_equal(dropped.next_actions, npz.next_actions[keep])
    with pytest.raises(FileNotFoundError, match="not found locally"):
        load_minari("cartpole/absent-v0")


def test_sample_actions_draws_like_generator_choice():
    """The one action sampler equals ``Generator.choice(A, p=row)`` row after row (same stream)."""
    from tdntk.datasets.policies import sample_actions

    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=500)
    probs[::7] = np.eye(4)[np.arange(0, 500, 7) % 4]  # deterministic rows too
    a, b = np.random.default_rng(11), np.random.default_rng(11)
    batched = sample_actions(probs, a)
    one_by_one = [b.choice(4, p=row) for row in probs]
    np.testing.assert_array_equal(batched, one_by_one)
    assert a.random() == b.random()  # the streams stay in step
