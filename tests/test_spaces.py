"""Any flattenable observation space, end to end: flattening, the space JSON, collect and the
.npz format on tabular environments, standardisation, Minari, and the CLI.

Independent routes: Gymnasium's own flatten/unflatten on hand-built observations,
hand-written JSON and masks, the toy-text environments' transition tables
(``env.unwrapped.P``) and Blackjack's rules, one-hot decoding by argmax, per-step
flattening against the batched one, and files written the version-1 way with plain NumPy.
"""

from __future__ import annotations

import csv
import json

import gymnasium
import numpy as np
import pytest
from click.testing import CliRunner
from gymnasium import spaces as gs
from gymnasium.vector.utils import concatenate, create_empty_array

from tdntk.cli import main
from tdntk.datasets import (
    Features,
    OfflineData,
    collect,
    load_minari,
    load_npz,
    save_npz,
)
from tdntk.datasets.spaces import (
    box_mask,
    component_names,
    components,
    flatten_batch,
    space_from_json,
    space_to_json,
)
from tdntk.experiments.evaluate import EvaluateConfig, evaluate

BLACKJACK_SIZES = (32, 11, 2)  # Tuple(Discrete(32), Discrete(11), Discrete(2))


def nested_space() -> gs.Dict:
    """Every supported kind, nested, with Dict keys out of sorted order."""
    return gs.Dict(
        [
            ("z", gs.Tuple([gs.Discrete(3, start=-1), gs.Box(-1.0, np.inf, (2, 2), np.float32)])),
            ("a", gs.MultiDiscrete([[2, 3], [4, 5]], start=[[0, 1], [2, -3]])),
            ("m", gs.MultiBinary([2, 3])),
            ("b", gs.Box(np.array([0, 1, 2]), np.array([5, 6, 255]), (3,), np.uint8)),
            ("t", gs.Tuple([gs.Dict([("y", gs.Discrete(2)), ("x", gs.Box(-2.0, 2.0, (1,)))])])),
        ]
    )


def _samples(space, count, seed=0):
    space.seed(seed)
    return [space.sample() for _ in range(count)]


def _strict_json(text):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------- flattening and JSON
def test_space_json_round_trip_keeps_nested_structure_and_flattening():
    space = nested_space()
    text = space_to_json(space)
    assert _strict_json(text)["type"] == "Dict"  # standard JSON: no Infinity/NaN constants
    back = space_from_json(text)
    assert back == space
    assert list(back.spaces) == ["z", "a", "m", "b", "t"]  # order kept, not sorted
    assert list(back["t"][0].spaces) == ["y", "x"]
    assert back["b"].dtype == np.uint8 and back["z"][1].dtype == np.float32
    assert gs.flatdim(back) == gs.flatdim(space) == 3 + 4 + 14 + 6 + 3 + 2 + 1
    for x in _samples(space, 20):
        flat = gs.flatten(space, x)
        # the read-back space flattens and unflattens exactly like the original
        np.testing.assert_array_equal(gs.flatten(back, x), flat)
        np.testing.assert_array_equal(gs.flatten(space, gs.unflatten(back, flat)), flat)
        np.testing.assert_array_equal(gs.flatten(back, gs.unflatten(space, flat)), flat)


def test_space_json_is_the_documented_schema():
    space = gs.Dict(
        [
            ("pos", gs.Box(np.array([-np.inf, 0.0]), np.array([np.inf, 1.5]), (2,), np.float64)),
            ("cell", gs.Discrete(3, start=1)),
        ]
    )
    assert _strict_json(space_to_json(space)) == {
        "type": "Dict",
        "spaces": [
            ["pos", {"type": "Box", "shape": [2], "dtype": "float64",
                     "low": ["-inf", 0.0], "high": ["inf", 1.5]}],
            ["cell", {"type": "Discrete", "n": 3, "start": 1, "dtype": "int64"}],
        ],
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown space type 'Text'"):
        space_from_json('{"type": "Text"}')
    with pytest.raises(ValueError, match="invalid space JSON"):
        space_from_json("{not json")
    with pytest.raises(ValueError, match="cannot flatten the space Text"):
        space_to_json(gs.Tuple([gs.Discrete(2), gs.Text(3)]))


@pytest.mark.parametrize(
    "space",
    [gs.Discrete(4, start=2), gs.MultiDiscrete([[2, 3], [4, 5]], start=[[0, 1], [2, -3]]),
     gs.MultiBinary([2, 3]), gs.Box(0.0, 5.0, (2, 3)), nested_space()],
    ids=["Discrete", "MultiDiscrete", "MultiBinary", "Box", "nested"],
)  # fmt: skip
def test_flatten_batch_equals_flatten_per_step(space):
    xs = _samples(space, 7, seed=1)
    batch = concatenate(space, xs, create_empty_array(space, len(xs)))  # Minari's layout
    expected = np.array([gs.flatten(space, x) for x in xs], dtype=np.float64)
    np.testing.assert_array_equal(flatten_batch(space, batch, len(xs)), expected)


def test_box_mask_and_components_against_a_hand_built_observation():
    space = nested_space()
    # Box parts set to 0.5 (a value no one-hot or 0/1 coordinate takes), the rest chosen
    x = {
        "z": (1, np.full((2, 2), 0.5, np.float32)),
        "a": np.array([[1, 2], [5, -1]]),
        "m": np.array([[1, 0, 1], [0, 0, 1]], np.int8),
        "b": np.array([3, 4, 7], np.uint8),
        "t": ({"y": 1, "x": np.array([0.5], np.float32)},),
    }
    flat = gs.flatten(space, x).astype(np.float64)
    mask = box_mask(space)
    is_box = np.r_[np.zeros(3), np.ones(4), np.zeros(14 + 6), np.ones(3), np.zeros(2), 1.0]
    np.testing.assert_array_equal(mask, is_box.astype(bool))
    assert np.all(flat[mask][:4] == 0.5) and np.all(flat[~mask] != 0.5)
    names = component_names(space)
    values = components(space, flat[None, :])[0]
    got = dict(zip(names, values, strict=True))
    assert len(names) == 1 + 4 + 4 + 6 + 3 + 1 + 1
    assert got["obs[z][0]"] == 1 and got["obs[z][1][1][0]"] == 0.5
    assert [got[f"obs[a][{i}][{j}]"] for i in (0, 1) for j in (0, 1)] == [1, 2, 5, -1]
    assert [got[f"obs[m][1][{j}]"] for j in range(3)] == [0, 0, 1]
    assert got["obs[b][2]"] == 7 and got["obs[t][0][y]"] == 1 and got["obs[t][0][x][0]"] == 0.5
    assert component_names(gs.Discrete(5)) == ["state_index"]
    bad = flat.copy()
    bad[0] = 0.5  # the Discrete part is no longer one-hot
    with pytest.raises(ValueError, match=r"row 0, part \['z', 0\] is not a flattened"):
        components(space, bad[None, :])


def test_standardisation_touches_only_box_coordinates():
    space = gs.Dict(
        [("pos", gs.Box(-5.0, 5.0, (2,), np.float64)), ("cell", gs.Discrete(3, start=1)),
         ("flags", gs.MultiBinary(2))]
    )  # fmt: skip
    rng = np.random.default_rng(0)

    def draw(n):
        return np.array([
            gs.flatten(space, {"pos": rng.normal([2.0, -1.0], [3.0, 0.5]),
                               "cell": int(rng.integers(1, 4)),
                               "flags": rng.integers(0, 2, 2).astype(np.int8)})
            for _ in range(n)
        ], dtype=np.float64)  # fmt: skip

    n = 50
    data = OfflineData(
        draw(n), rng.integers(0, 2, n), rng.normal(size=n), draw(n), np.zeros(n, bool),
        np.zeros(n, bool), observation_space=space, action_space=gs.Discrete(2),
    )  # fmt: skip
    features = Features.from_spaces(space, gs.Discrete(2), standardize=data)
    both = np.concatenate([data.observations, data.next_observations])
    z = features.encode_observations(both)
    # one-hot (cell) and 0/1 (flags) coordinates: mean 0, scale 1, values untouched
    np.testing.assert_array_equal(features.obs_mean[2:], 0.0)
    np.testing.assert_array_equal(features.obs_scale[2:], 1.0)
    np.testing.assert_array_equal(z[:, 2:], both[:, 2:])
    # Box coordinates: the dataset's mean and std (NumPy on the columns), then mean 0, std 1
    np.testing.assert_allclose(features.obs_mean[:2], both[:, :2].mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(features.obs_scale[:2], both[:, :2].std(axis=0), rtol=1e-14)
    np.testing.assert_allclose(z[:, :2].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[:, :2].std(axis=0), 1.0, rtol=1e-12)
    raw = Features.from_spaces(space, gs.Discrete(2))
    np.testing.assert_array_equal(raw.encode_observations(both), both)
    with pytest.raises(ValueError, match="Features: observation space: cannot flatten"):
        Features.from_spaces(gs.Sequence(gs.Discrete(2)), gs.Discrete(2))


# ---------------------------------------------------------------------- collect and .npz
def _one_hot_index(rows, sizes):
    """(n, sum(sizes)) concatenated one-hots -> (n, len(sizes)) indices, by argmax."""
    bounds = np.cumsum((0,) + tuple(sizes))
    parts = [rows[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    for part in parts:  # exactly one 1 per part
        np.testing.assert_array_equal(np.sort(part, axis=1)[:, -1], 1.0)
        np.testing.assert_array_equal(part.sum(axis=1), 1.0)
    return np.stack([np.argmax(part, axis=1) for part in parts], axis=1)


def _check_against_transition_table(env_id, data):
    """Every (s, a) -> (s', r, terminated) is a possible outcome in the environment's P."""
    table = gymnasium.make(env_id).unwrapped.P
    n = data.observation_space.n
    s = _one_hot_index(data.observations, (n,))[:, 0]
    s_next = _one_hot_index(data.next_observations, (n,))[:, 0]
    for i in range(data.n):
        outcomes = {(nxt, float(r), bool(t)) for p, nxt, r, t in table[s[i]][data.actions[i]] if p}
        assert (s_next[i], data.rewards[i], data.terminated[i]) in outcomes, i


def _check_blackjack_rules(data):
    cards = _one_hot_index(data.observations, BLACKJACK_SIZES)
    assert np.all((cards[:, 0] >= 4) & (cards[:, 1] >= 1) & (cards[:, 1] <= 10))
    assert set(np.unique(data.rewards)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(data.terminated[data.actions == 0], True)  # stick ends it
    going = ~data.terminated
    np.testing.assert_array_equal(data.actions[going], 1)  # only a hit continues, unrewarded
    np.testing.assert_array_equal(data.rewards[going], 0.0)


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "CliffWalking-v1", "Taxi-v4", "Blackjack-v1"])
def test_collect_npz_round_trip_on_tabular_environments(tmp_path, env_id):
    data = collect(env_id, None, 300, seed=0)
    env_space = gymnasium.make(env_id).observation_space
    assert data.observation_space == env_space and data.obs_dim == gs.flatdim(env_space)
    if env_id == "Blackjack-v1":
        _check_blackjack_rules(data)
    else:
        _check_against_transition_table(env_id, data)
    # within an episode s'_i = s_{i+1}
    inside = ~(data.terminated | data.truncated)[:-1]
    np.testing.assert_array_equal(
        data.next_observations[:-1][inside], data.observations[1:][inside]
    )
    back = load_npz(save_npz(tmp_path / "d.npz", data))
    for name in ("observations", "actions", "rewards", "next_observations", "terminated",
                 "truncated", "next_actions", "next_action_probs", "episode_ids"):  # fmt: skip
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name), err_msg=name)
    assert back.observation_space == env_space and back.action_space == data.action_space
    if isinstance(env_space, gs.Tuple):
        assert [s.n for s in back.observation_space.spaces] == list(BLACKJACK_SIZES)


# ---------------------------------------------------------------------- empty and version 1
def _arrays(n, o=2):
    rng = np.random.default_rng(0)
    return dict(
        observations=rng.normal(size=(n, o)), actions=rng.integers(0, 2, n),
        rewards=rng.normal(size=n), next_observations=rng.normal(size=(n, o)),
        terminated=np.zeros(n, bool), truncated=np.ones(n, bool),
    )  # fmt: skip


def test_empty_datasets_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"OfflineData\.observations: the dataset is empty"):
        OfflineData(**_arrays(0))
    with pytest.raises(ValueError, match=r"OfflineData\.observations: the dataset is empty"):
        OfflineData(**{**_arrays(0), "observations": np.zeros(0)})
    np.savez(tmp_path / "zero.npz", **_arrays(0))
    with pytest.raises(ValueError, match=r"zero\.npz: OfflineData\.observations: the dataset is"):
        load_npz(tmp_path / "zero.npz")
    np.savez(tmp_path / "none.npz")
    with pytest.raises(ValueError, match=r"none\.npz: the archive holds no arrays"):
        load_npz(tmp_path / "none.npz")
    data = OfflineData(**_arrays(3))
    with pytest.raises(ValueError, match="the dataset is empty"):
        data.subset(np.zeros(3, bool))


@pytest.mark.parametrize("with_version", [True, False])
def test_version_1_files_still_load(tmp_path, with_version):
    arrays = _arrays(5, o=3)
    low, high = np.array([-1.0, -np.inf, 0.0]), np.array([1.0, np.inf, 2.5])
    v1 = dict(observation_low=low, observation_high=high, action_n=np.asarray(3),
              action_start=np.asarray(-1), next_actions=np.zeros(5, int))  # fmt: skip
    arrays["actions"] = arrays["actions"] - 1
    if with_version:
        v1["format_version"] = np.asarray(1)
    np.savez(tmp_path / "v1.npz", **arrays, **v1)
    data = load_npz(tmp_path / "v1.npz")
    assert data.observation_space == gs.Box(low, high, (3,), np.float64)
    assert data.action_space == gs.Discrete(3, start=-1)
    np.testing.assert_array_equal(data.observations, arrays["observations"])
    # a Box action space, version 1
    box = _arrays(4)
    box["actions"] = np.zeros((4, 2))
    np.savez(tmp_path / "v1box.npz", **box, action_low=np.array([-2.0, 0.0]),
             action_high=np.array([2.0, 1.0]), format_version=np.asarray(1))  # fmt: skip
    act = load_npz(tmp_path / "v1box.npz").action_space
    assert act == gs.Box(np.array([-2.0, 0.0]), np.array([2.0, 1.0]), (2,), np.float64)
    # written again it becomes version 2 and reads back the same
    again = load_npz(save_npz(tmp_path / "v2.npz", data))
    assert again.observation_space == data.observation_space
    with np.load(tmp_path / "v2.npz") as raw:
        assert int(raw["format_version"]) == 2 and "observation_low" not in raw.files


def test_space_arrays_of_the_other_version_are_refused(tmp_path):
    text = space_to_json(gs.Box(-1.0, 1.0, (2,)))
    np.savez(tmp_path / "mixed.npz", **_arrays(3), observation_low=np.zeros(2),
             format_version=np.asarray(2))  # fmt: skip
    message = r"unknown array\(s\) observation_low for format_version 2"
    with pytest.raises(ValueError, match=message):
        load_npz(tmp_path / "mixed.npz")
    np.savez(tmp_path / "mixed1.npz", **_arrays(3), observation_space_json=np.asarray(text),
             format_version=np.asarray(1))  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown array\(s\) observation_space_json"):
        load_npz(tmp_path / "mixed1.npz")
    np.savez(tmp_path / "bad.npz", **_arrays(3), observation_space_json=np.asarray("[1"))
    with pytest.raises(ValueError, match=r"bad\.npz: observation_space_json: invalid space JSON"):
        load_npz(tmp_path / "bad.npz")


# ---------------------------------------------------------------------- Minari
class CorridorDictEnv(gymnasium.Env):
    """Five cells in a row with a Dict observation (Discrete, Box noise, MultiBinary bits)."""

    observation_space = gs.Dict(
        [("cell", gs.Discrete(5)), ("noise", gs.Box(-1.0, 1.0, (2,), np.float64)),
         ("bits", gs.MultiBinary(2))]
    )  # fmt: skip
    action_space = gs.Discrete(2)

    def _obs(self):
        bits = np.array([self.cell % 2, self.cell > 2], np.int8)
        return {"cell": self.cell, "noise": self.np_random.uniform(-1, 1, 2), "bits": bits}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cell = 0
        return self._obs(), {}

    def step(self, action):
        self.cell = max(0, self.cell + (1 if action else -1))
        return self._obs(), float(self.cell == 4), self.cell == 4, False, {}


def _dict_raw(obs):
    return int(obs["noise"][0] > -0.5)


def _blackjack_raw(obs):
    return int(obs[0] < 17)


def _minari(dataset_id, env, policy, n, seed):
    import minari

    env = minari.DataCollector(env)
    obs, _ = env.reset(seed=seed)
    for i in range(n):
        obs, _, terminated, truncated, _ = env.step(policy(obs))
        if (terminated or truncated) and i < n - 1:
            obs, _ = env.reset(options={"minari_autoseed": False})
    env.create_dataset(
        dataset_id=dataset_id, algorithm_name="rule", author="tdntk tests",
        author_email="tests@tdntk.invalid", code_permalink="tests/test_spaces.py",
        description="tiny test dataset",
    )  # fmt: skip
    env.close()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Minari: no eval_env for a test env
@pytest.mark.parametrize("kind", ["dict", "blackjack"])
def test_minari_reader_flattens_tuple_and_dict_observations(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    if kind == "dict":
        make, raw = (lambda: gymnasium.wrappers.TimeLimit(CorridorDictEnv(), 8)), _dict_raw
    else:
        make, raw = (lambda: gymnasium.make("Blackjack-v1")), _blackjack_raw
    _minari(f"test/{kind}-v0", make(), raw, 40, seed=2)
    space = make().observation_space

    def flat_policy(obs):  # what collect calls: the flat observation of the env's space
        return raw(gs.unflatten(space, obs))

    ours = collect(make(), flat_policy, 40, seed=2)
    mini_space = gymnasium.spaces.Dict(dict(space.spaces)) if kind == "dict" else space

    def mini_policy(obs):  # load_minari's behaviour policy: flat in the dataset's space
        return raw(gs.unflatten(mini_space, obs))

    mini = load_minari(f"test/{kind}-v0", behaviour_policy=mini_policy)
    assert mini.observation_space == space and mini.n == ours.n == 40
    if kind == "dict":
        assert list(mini.observation_space.spaces) == ["bits", "cell", "noise"]  # Minari sorts
    for name in ("observations", "next_observations"):
        for a, b in zip(getattr(mini, name), getattr(ours, name), strict=True):
            # the same observations, each decoded by gymnasium in its own space's order
            u, v = gs.unflatten(mini.observation_space, a), gs.unflatten(space, b)
            for key in range(3) if kind == "blackjack" else space.spaces:
                np.testing.assert_array_equal(u[key], v[key], err_msg=f"{name} {key}")
    for name in ("actions", "rewards", "terminated", "truncated"):
        np.testing.assert_array_equal(getattr(mini, name), getattr(ours, name), err_msg=name)
    # after a terminal step Minari repeats the step's action (discount 0: it does not matter)
    going = ~ours.terminated
    np.testing.assert_array_equal(mini.next_actions[going], ours.next_actions[going])


# ---------------------------------------------------------------------- CLI end to end
def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _read_csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


@pytest.mark.parametrize(
    "env_id, seed, sizes, names, rewards",
    [
        ("FrozenLake-v1", 3, (16,), ["state_index"], (0.0, 1.0)),
        ("Blackjack-v1", 0, BLACKJACK_SIZES, ["obs[0]", "obs[1]", "obs[2]"], (-1.0, 1.0)),
    ],
)
def test_cli_collect_and_evaluate_tabular(tmp_path, env_id, seed, sizes, names, rewards):
    data_path, out, gamma = tmp_path / "d.npz", tmp_path / "out", 0.9
    r = _run(["collect", "--env", env_id, "--transitions", 300, "--seed", seed,
              "--out", data_path, "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = _run(["evaluate", "--data", data_path, "--gamma", gamma, "--t", "inf", "--out", out,
              "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    values = _read_csv(out / "values.csv")
    data = load_npz(data_path)
    o = sum(sizes)
    header = list(values)
    assert header[: 1 + len(names)] == ["state", *names] and f"obs_{o - 1}" in header
    flat = np.stack([values[f"obs_{j}"] for j in range(o)], axis=1)
    decoded = _one_hot_index(flat, sizes)
    np.testing.assert_array_equal(np.stack([values[k] for k in names], axis=1), decoded)
    # one row per distinct non-terminal next state (the uniform behaviour policy's
    # recorded probabilities make the next inputs a function of the state)
    visited = {tuple(s) for s in _one_hot_index(data.next_observations[~data.terminated], sizes)}
    assert {tuple(s) for s in decoded} == visited and len(decoded) == len(visited)
    # values within the feasible range [r_min, r_max] / (1 - gamma) of the environment
    low, high = rewards[0] / (1 - gamma), rewards[1] / (1 - gamma)
    assert np.all(np.isfinite(values["value_mean"])) and np.all(values["value_std"] >= 0)
    assert low <= values["value_mean"].mean() <= high
    assert np.all((values["value_mean"] >= low - 1e-9) & (values["value_mean"] <= high + 1e-9))
    assert np.ptp(values["value_mean"]) > 1e-3  # rewards were seen: not all values equal
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plot_x"] == names[0] and summary["data"]["observation_dim"] == o
    assert (out / "values.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = _run(["evaluate", "--data", data_path, "--t", "inf", "--plot-coordinate", len(names),
                "--out", tmp_path / "bad", "--no-progress"])  # fmt: skip
    assert bad.exit_code != 0 and "--plot-coordinate" in bad.output and names[-1] in bad.output


def _left(obs):
    return 0


def test_given_states_must_be_flattened_observations():
    data = collect("FrozenLake-v1", None, 60, seed=0)
    policy = _left
    states = np.eye(16)[[0, 5]]
    result = evaluate(data, EvaluateConfig(gamma=0.9, t=np.inf), policy, states)
    assert result.value_mean.shape == (2,)
    states[1, 6] = 1.0  # two ones: not a one-hot vector
    with pytest.raises(ValueError, match=r"states: row 1 is not a flattened observation"):
        evaluate(data, EvaluateConfig(gamma=0.9, t=np.inf), policy, states)
