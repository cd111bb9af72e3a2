"""Policies from the ecosystem: modules in the current folder, batched callables,
stochastic Box-action policies (K sampled actions), Stable-Baselines3-style models (a
fake one: SB3 is an optional extra), and D4RL's array names (issue 12).

Independent routes: per-row calls against batched ones; `Transitions` built by hand
against `to_transitions`; the fake model's own predictions.
"""

from __future__ import annotations

import json
import sys
import types
import zipfile

import gymnasium
import numpy as np
import pytest

from tdntk.data import Transitions, discounts
from tdntk.datasets import Features, collect, load_npz, load_policy, to_transitions
from tdntk.datasets.collect import make_env
from tdntk.datasets.features import next_inputs
from tdntk.datasets.policies import ModelPolicy, policy_actions, sampled_actions


# ---------------------------------------------------------------------- the current folder
def test_module_and_env_id_are_found_in_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "tdntk_cwd_policy_mod.py").write_text(
        "def act(obs):\n    return 1\n\nclass Nested:\n    @staticmethod\n"
        "    def act(obs):\n        return 0\n"
    )
    (tmp_path / "tdntk_cwd_env_mod.py").write_text(
        "import gymnasium\n"
        "gymnasium.register(id='TdntkCwdEnv-v0', "
        "entry_point='gymnasium.envs.classic_control.cartpole:CartPoleEnv')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    assert load_policy("tdntk_cwd_policy_mod:act")(np.zeros(4)) == 1
    assert load_policy("tdntk_cwd_policy_mod:Nested.act")(np.zeros(4)) == 0
    env = make_env("tdntk_cwd_env_mod:TdntkCwdEnv-v0")
    assert env.observation_space.shape == (4,)
    assert sys.path == before  # the folder was only on the path while importing
    with pytest.raises(ValueError, match="cannot import 'no_such_tdntk_module'"):
        load_policy("no_such_tdntk_module:f")


# ---------------------------------------------------------------------- batched callables
def test_batched_policy_is_called_once_and_agrees_with_per_row_calls():
    space = gymnasium.spaces.Discrete(3)
    obs = np.random.default_rng(0).normal(size=(50, 4))
    calls = []

    def per_row(o):
        return int(np.argmax(o[:3]))

    def batched(o):
        calls.append(o.shape)
        return np.argmax(o[:, :3], axis=1)

    batched.batched = True
    np.testing.assert_array_equal(
        policy_actions(batched, obs, space), policy_actions(per_row, obs, space)
    )
    assert calls == [(50, 4)]

    def wrong(o):
        return np.zeros(3, int)

    wrong.batched = True
    with pytest.raises(ValueError, match="one action per state"):
        policy_actions(wrong, obs, space)


# ---------------------------------------------------------------------- stochastic Box actions
class _Cycling:
    """A 'stochastic' Box policy whose draws cycle through fixed torques (so the K draws
    are known): sample() returns the next one; __call__ the mean action."""

    def __init__(self, torques):
        self.torques = [np.array([t]) for t in torques]
        self.i = 0

    def sample(self, obs):
        t = self.torques[self.i % len(self.torques)]
        self.i += 1
        return t

    def __call__(self, obs):
        return np.array([float(np.mean(self.torques))])


def test_stochastic_box_policy_uses_k_sampled_actions_with_weights_1_over_k():
    data = collect("Pendulum-v1", None, 30, seed=0)
    features = Features.from_spaces(data.observation_space, data.action_space, standardize=data)
    policy = _Cycling([-1.5, 0.5, 2.0])
    tr = to_transitions(data, features, 0.9, policy, data.action_space, action_samples=3)
    # by hand: draw j at every state is torque j (the per-row calls cycle 0, 1, 2, ...)
    k = 3
    x_next = _hand_next_inputs(features, data, [-1.5, 0.5, 2.0])
    expected = Transitions(
        features.encode(data.observations, data.actions), data.rewards, x_next,
        discounts(0.9, data.terminated), np.full((data.n, k), 1 / k),
    )  # fmt: skip
    np.testing.assert_array_equal(tr.x_next, expected.x_next)
    np.testing.assert_array_equal(tr.next_weights, expected.next_weights)
    # K = 1 keeps the deterministic route: policy(obs)
    x1, w1 = next_inputs(data.next_observations, features, policy, action_space=data.action_space)
    assert w1 is None and np.allclose(x1[:, 0, -1], features.encode_actions(
        np.full((data.n, 1), np.mean([-1.5, 0.5, 2.0])))[:, 0])  # fmt: skip
    with pytest.raises(ValueError, match="action_samples must be >= 1"):
        sampled_actions(policy, data.observations, data.action_space, 0)


def _hand_next_inputs(features, data, torques):
    """Draw j of state i is the (j n + i)-th call: sampled_actions calls the policy once
    per state for draw 0, then again for draw 1, ...; with 3 torques cycling that is
    torques[(j n + i) % 3]."""
    n = data.n
    cols = []
    for j in range(len(torques)):
        acts = np.array([[torques[(j * n + i) % len(torques)]] for i in range(n)])
        cols.append(features.encode(data.next_observations, acts))
    return np.stack(cols, axis=1)


# ---------------------------------------------------------------------- SB3-style models
class _FakeModel:
    """Duck-types a Stable-Baselines3 model on FrozenLake: predict((n,) int states)."""

    observation_space = gymnasium.spaces.Discrete(16)
    table = np.arange(16) % 4

    def __init__(self):
        self.calls = []

    def predict(self, obs, deterministic=True):
        obs = np.asarray(obs)
        self.calls.append((obs.shape, deterministic))
        action = self.table[obs] if deterministic else (self.table[obs] + 1) % 4
        return action, None


def _fake_sb3(monkeypatch):
    module = types.ModuleType("stable_baselines3")
    loaded = {}

    class _Algo:
        @classmethod
        def load(cls, path, device="auto"):
            loaded["args"] = (cls.__name__, path, device)
            return _FakeModel()

    module.PPO = type("PPO", (_Algo,), {})
    module.DQN = type("DQN", (_Algo,), {})
    monkeypatch.setitem(sys.modules, "stable_baselines3", module)
    return loaded


def test_sb3_spec_loads_a_model_and_wraps_predict(tmp_path, monkeypatch):
    loaded = _fake_sb3(monkeypatch)
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", json.dumps(
            {"policy_class": {"__module__": "stable_baselines3.dqn.policies"}}))  # fmt: skip
    policy = load_policy(f"sb3:PPO:{path}")
    assert loaded["args"] == ("PPO", str(path), "cpu") and isinstance(policy, ModelPolicy)
    eye = np.eye(16)
    # flattened one-hot observations are unflattened to the model's Discrete states
    np.testing.assert_array_equal(policy(eye), _FakeModel.table)
    assert policy(eye[7]) == _FakeModel.table[7]
    acts = policy_actions(policy, eye[[3, 5, 9]], gymnasium.spaces.Discrete(4))
    np.testing.assert_array_equal(acts, _FakeModel.table[[3, 5, 9]])
    assert policy.model.calls[-1] == ((3,), True)  # one batched call
    np.testing.assert_array_equal(policy.sample(eye[[3]]), (_FakeModel.table[[3]] + 1) % 4)
    assert policy.model.calls[-1] == ((1,), False)
    # the algorithm read from the file's policy class (stable_baselines3.dqn -> DQN)
    load_policy(f"sb3:{path}")
    assert loaded["args"][0] == "DQN"
    with zipfile.ZipFile(tmp_path / "ac.zip", "w") as archive:
        archive.writestr("data", json.dumps(
            {"policy_class": {"__module__": "stable_baselines3.common.policies"}}))  # fmt: skip
    with pytest.raises(ValueError, match="name it: sb3:ALGO:"):
        load_policy(f"sb3:{tmp_path / 'ac.zip'}")
    with pytest.raises(ValueError, match="no algorithm 'NOPE'"):
        load_policy(f"sb3:NOPE:{path}")


def test_sb3_missing_package_gives_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "model.zip"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # import raises ImportError
    with pytest.raises(ValueError, match="pip install stable-baselines3"):
        load_policy(f"sb3:PPO:{path}")
    with pytest.raises(ValueError, match="does not exist"):
        load_policy(f"sb3:PPO:{tmp_path / 'absent.zip'}")


# ---------------------------------------------------------------------- D4RL names
def test_d4rl_terminals_and_timeouts_read_as_terminated_and_truncated(tmp_path):
    rng = np.random.default_rng(0)
    n = 9
    terminals = np.zeros(n, bool)
    terminals[3] = True
    timeouts = np.zeros(n, bool)
    timeouts[6] = True
    arrays = {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.normal(size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, 3)).astype(np.float32),
        "terminals": terminals.astype(np.float32),  # D4RL stores them as floats
        "timeouts": timeouts,
        "infos/qpos": rng.normal(size=(n, 2)),
        "metadata/algorithm": np.asarray("SAC"),
    }
    np.savez(tmp_path / "d4rl.npz", **arrays)
    data = load_npz(tmp_path / "d4rl.npz")
    np.testing.assert_array_equal(data.terminated, terminals)
    np.testing.assert_array_equal(data.truncated, timeouts)
    np.testing.assert_array_equal(data.episode_ids, [0, 0, 0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_allclose(data.rewards, arrays["rewards"])
    both = dict(arrays, terminated=terminals)
    np.savez(tmp_path / "both.npz", **both)
    with pytest.raises(ValueError, match="both 'terminals'"):
        load_npz(tmp_path / "both.npz")
    del arrays["timeouts"]
    np.savez(tmp_path / "no_timeouts.npz", **arrays)
    with pytest.raises(ValueError, match="no 'timeouts'"):
        load_npz(tmp_path / "no_timeouts.npz")
