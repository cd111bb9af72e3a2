"""The CartPole experiment: dataset handling of terminated/truncated, and the tiny pipeline."""

from __future__ import annotations

import csv
import dataclasses

import gymnasium
import numpy as np
import pytest

from tdntk.experiments.cartpole import METHODS, PRESETS, SPLITS, make_dataset, run
from tdntk.policies import LinearPolicy, train_cartpole_policy


@pytest.fixture(scope="module")
def policy():
    return train_cartpole_policy(seed=0, eval_episodes=50).policy


def test_dataset_discounts_and_time_limit(policy):
    # a 25-step limit and a noisier policy (epsilon 0.9) give both truncated and terminated
    # transitions; gamma = 0.9 tells the discounts apart
    policy = LinearPolicy(policy.weights, policy.bias, epsilon=0.9)
    cfg = dataclasses.replace(PRESETS["tiny"], n_transitions=400, gamma=0.9, next_action="expected")
    env = gymnasium.make("CartPole-v1", max_episode_steps=25)
    data, features, tr = make_dataset(cfg, policy, seed=3, env=env)
    assert data.terminated.any() and data.truncated.any()
    assert not np.any(data.terminated & data.truncated)
    # terminated -> 0; truncated (time limit) and ordinary -> gamma, exactly
    np.testing.assert_array_equal(tr.discount[data.terminated], 0.0)
    np.testing.assert_array_equal(tr.discount[~data.terminated], 0.9)
    # terminal next states are out of bounds; truncated ones are not (the physics' thresholds)
    out = (np.abs(data.next_observations[:, 0]) > 2.4) | (
        np.abs(data.next_observations[:, 2]) > 12 * 2 * np.pi / 360
    )
    np.testing.assert_array_equal(out, data.terminated)
    # every truncation but the data's last transition is the 25th step of its episode
    ends = np.flatnonzero(data.truncated)
    for i in ends[ends < data.n - 1]:
        assert np.sum(data.episode_ids == data.episode_ids[i]) == 25
    # inputs: standardised state (dataset statistics by hand) and a one-hot action
    both = np.concatenate([data.observations, data.next_observations])
    want = (data.observations - both.mean(0)) / both.std(0)
    np.testing.assert_allclose(tr.x[:, :4], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(tr.x[:, 4:], np.eye(2)[data.actions])
    # next inputs: both actions, weighted by the policy's probabilities at s'
    assert tr.k == 2
    np.testing.assert_array_equal(tr.x_next[:, 0, 4:], np.tile([1.0, 0.0], (data.n, 1)))
    np.testing.assert_allclose(tr.next_weights, policy.action_probs(data.next_observations))


def test_sampled_next_action_is_the_next_input(policy):
    # SARSA targets: x''_i is the logged (s', a'), which is x_{i+1} inside an episode
    data, _, tr = make_dataset(PRESETS["tiny"], policy, seed=1)
    assert tr.k == 1
    same = data.episode_ids[1:] == data.episode_ids[:-1]
    np.testing.assert_array_equal(tr.x_next[:-1, 0][same], tr.x[1:][same])
    np.testing.assert_array_equal(tr.discount, 1.0 - data.terminated)


def test_raw_inputs_when_not_standardised(policy):
    cfg = dataclasses.replace(PRESETS["tiny"], standardize=False)
    data, _, tr = make_dataset(cfg, policy, seed=0)
    np.testing.assert_array_equal(tr.x[:, :4], data.observations)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_pipeline(tmp_path):
    cfg = dataclasses.replace(PRESETS["tiny"], out=str(tmp_path / "out"), n_transitions=160)
    results = run(cfg)
    out = tmp_path / "out"
    for name in (
        "report.md",
        "table.md",
        "table.csv",
        "scores.csv",
        "calibration.png",
        "scatter_train.png",
        "scatter_test.png",
        "training.png",
    ):
        assert (out / name).stat().st_size > 0, name
    table = _csv(out / "table.csv")
    assert {(r["split"], r["method"]) for r in table} == {(s, m) for s in SPLITS for m in METHODS}
    # the table's RMSE is recomputed from the saved predictions and truths (round-off)
    for seed in range(cfg.seeds):
        saved = np.load(out / f"predictions_seed{seed}.npz")
        for method in ("nn", "lin", "ntk_inf"):
            for split in ("train", "test"):
                idx = saved[f"split_{split}"]
                want = np.sqrt(np.mean((saved[f"{method}_mean"][idx] - saved["truth"][idx]) ** 2))
                row = [
                    r
                    for r in _csv(out / "scores.csv")
                    if (r["seed"], r["split"], r["method"]) == (str(seed), split, method)
                ]
                assert float(row[0]["rmse"]) == pytest.approx(want, rel=1e-12)
    # Monte Carlo truth: a transition that terminates has Q(s, a) = 1 exactly (gamma = 1,
    # deterministic physics); every Q is >= 1 and the spread across states is real
    s = results.seeds[0]
    data_terminated = s.truth.mean[s.inputs.splits["train"]][_terminated(cfg, seed=0)]
    assert data_terminated.size > 0
    np.testing.assert_array_equal(data_terminated, 1.0)
    assert s.truth.mean.min() >= 1.0 and s.truth.mean.std() > 5.0
    # the learning rate is the configured fraction of eq. 11's critical rate
    assert s.learning_rate == pytest.approx(cfg.lr_fraction * s.critical_learning_rate)
    report = (out / "report.md").read_text()
    assert (
        report.count("**reproduced**")
        + report.count("**not reproduced**")
        + report.count("**partly**")
        >= 4
    )


def _terminated(cfg, seed):
    policy = train_cartpole_policy(
        seed=cfg.policy_seed, epsilon=cfg.policy_epsilon, target_return=cfg.policy_target_return
    ).policy
    data, _, _ = make_dataset(cfg, policy, seed)
    return data.terminated


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="lr_fraction"):
        dataclasses.replace(PRESETS["tiny"], lr_fraction=1.5)
    with pytest.raises(ValueError, match="members"):
        dataclasses.replace(PRESETS["tiny"], members=1)


def test_linear_policy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="bias"):
        LinearPolicy(np.zeros((2, 4)), np.zeros(3))
