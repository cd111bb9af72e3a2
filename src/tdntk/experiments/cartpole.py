"""CartPole offline policy evaluation: the paper's Table 1 (sec. 5.2, app. D.2) and more.

Top to bottom, for each seed s (dataset and initialisations), after one policy:

1. **Policy** (`tdntk.experiments.cartpole_policy.train_cartpole_policy`): a linear policy with
   epsilon action noise, trained by the cross-entropy method and stopped at a
   moderate return, so values differ across states. Behaviour = target policy.
2. **Dataset** (`tdntk.datasets.collect`): ``n_transitions`` transitions of
   CartPole-v1 with ``terminated`` and ``truncated`` kept apart; inputs are
   (state, one-hot action), the state optionally standardised with the
   dataset's statistics; discount ``gamma * (1 - terminated)`` (a truncated
   transition keeps gamma); next inputs: the logged next action (SARSA,
   default) or both actions weighted by the policy (``next_action``).
3. **Ground truth** (`tdntk.envs.cartpole.monte_carlo_returns`): Monte Carlo Q(s, a)
   of the evaluated policy (sec. 5.2; app. D.2's "greedy policy" would not be
   policy evaluation), ``mc_rollouts`` rollouts per input. Time limit: the TD
   targets bootstrap through truncated transitions, so their fixed point is
   the value of CartPole *without* the 500-step limit; the rollouts therefore
   run to termination (cut at ``mc_horizon`` steps, reported). Inputs: every
   dataset transition (s_i, a_i) ("train"), the subset at the dataset's
   episode starts ("train-init"), and ``test_states`` fresh initial states
   with a ~ pi(s) ("test").
4. **Methods** on the same inputs:
   * NNs: ``members`` networks trained by full-batch TD gradient descent
     (`tdntk.training.train_ensemble`) for ``steps`` steps at a stable rate
     ``lr_fraction * eta_critical`` of the dataset's analytic NTK; and at the
     paper's eta = 0.1 (summed loss, eq. 6) for ``paper_lr_steps`` steps, which
     diverges when 0.1 > 2 / l_max (recorded);
   * TD-NTK, finite width (the paper's Table 1): eq. 8 and 5 for each of the
     NNs' own initialisations (`tdntk.empirical.linearised_ensemble`);
   * TD-NTK, infinite width: eq. 10 (`tdntk.TDNTK.predict`);
   * TD-NTK, infinite width, the TD estimator (a target network, t = infinity; the
     default of `tdntk evaluate`), with the ensemble's std alone and with intervals
     calibrated for the finite dataset (ensemble variance + a jackknife over groups of
     episodes refitted in closed form, `tdntk.policy_value`; the std is scaled so that
     the Gaussian 95 % interval is the t interval).
   The closed forms are continuous-time, so they depend on eta t only; they are
   evaluated at eta t = the NNs' (``matched``), at the paper's eta t = 0.1 * 2^16
   with the summed loss (``paper``) and with a mean loss (``paper-mean``,
   eta t = 0.1 * 2^16 / n), and (infinite width) at t = infinity.
5. **Scores** (`tdntk.metrics`): RMSE of the mean, Gaussian NLL (ensembles: a
   Gaussian fitted to the members), 68 %/95 % coverage, CRPS; wall times.
6. **Policy value** J(pi): the TD estimate averaged over the dataset's episode starts,
   with its calibrated and its ensemble-only 95 % intervals, against J from Monte Carlo
   episodes from fresh initial states.

`run(cfg)` writes table.md/table.csv, figures, report.md and stages.json (time
per stage) to ``cfg.out`` (`tdntk.report.cartpole`). The policy, and per seed
the ground truth, the closed form, each training and the linearisations, are
stages (`tdntk.experiments.stages`): saved under ``<out>/checkpoints`` when
done, the trainings checkpointing every ``checkpoint_every_s`` seconds, so
rerunning the same command resumes where it stopped.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy import stats

from ..data import Transitions, discounts
from ..datasets.collect import collect
from ..datasets.features import Features, to_transitions
from ..datasets.policies import sample_actions
from ..dynamics import DivergenceWarning, LearningRateWarning, Schedule, SoftTarget
from ..empirical import linearised_ensemble
from ..envs.cartpole import MonteCarloReturns, initial_states, monte_carlo_returns
from ..metrics import fit_gaussian, score_gaussian
from ..nets import MLP
from ..policy_value import (
    FixedPointResampler,
    episode_groups,
    interval,
    jackknife_std,
    quadratic_std,
)
from ..predict import TDNTK
from ..training import init_ensemble, train_ensemble
from .cartpole_policy import PolicyTraining, train_cartpole_policy
from .command import Command, checkpoint_option, doc, overwrite_option, progress_option
from .stages import Stages, run_in_stages

__all__ = [
    "CartPoleConfig",
    "PRESETS",
    "METHODS",
    "SPLITS",
    "SeedResult",
    "CartPoleResults",
    "make_dataset",
    "run_seed",
    "simulate",
    "run",
    "COMMAND",
]

ENV_ID = "CartPole-v1"

# method key -> (family, description); the order is the table's.
METHODS = {
    "nn_paper_lr": ("NNs", "NNs, paper's eta = 0.1 (summed loss)"),
    "nn": ("NNs", "NNs, stable eta"),
    "lin": ("TD-NTK lin.", "TD-NTK finite-width lin. (eq. 8, 5), eta t matched to NNs"),
    "lin_paper": ("TD-NTK lin.", "TD-NTK finite-width lin., eta t = 0.1 * 2^16 (paper, sum)"),
    "lin_paper_mean": ("TD-NTK lin.", "TD-NTK finite-width lin., eta t = 0.1 * 2^16 / n (mean)"),
    "ntk": ("TD-NTK inf.", "TD-NTK infinite width (eq. 10), eta t matched to NNs"),
    "ntk_paper": ("TD-NTK inf.", "TD-NTK infinite width, eta t = 0.1 * 2^16 (paper, sum)"),
    "ntk_paper_mean": ("TD-NTK inf.", "TD-NTK infinite width, eta t = 0.1 * 2^16 / n (mean)"),
    "ntk_inf": ("TD-NTK inf.", "TD-NTK infinite width, t = infinity"),
    "td_inf": ("TD-NTK inf.", "TD-NTK infinite width, TD estimator (target network), t = inf"),
    "td_inf_jk": (
        "TD-NTK inf.",
        "TD-NTK inf. width, TD, t = inf, calibrated: ensemble + jackknife over episodes",
    ),
}
# Jackknife groups of episodes for the calibrated rows (as `tdntk evaluate`'s default).
JACKKNIFE_GROUPS = 20
# Fresh initial states whose Monte Carlo episodes give the true policy value J.
TRUE_J_EPISODES = 4096
SPLITS = ("train", "train-init", "test")


@dataclass(frozen=True)
class CartPoleConfig:
    """Settings of the CartPole experiment (defaults: the paper's, sec. 5.2 and app. D.2)."""

    out: str = field(default="runs/cartpole", metadata=doc("Output folder (report.md, table)."))
    seeds: int = field(default=5, metadata=doc("Seeds of dataset and initialisation (0..k-1)."))
    n_transitions: int = field(default=2048, metadata=doc("Transitions in each dataset."))
    gamma: float = field(default=1.0, metadata=doc("Discount (the paper: 1)."))
    standardize: bool = field(
        default=True, metadata=doc("Standardise the state part of the inputs (dataset stats).")
    )
    net: MLP = field(
        default=MLP(depth=2, width=256), metadata=doc("The network (eq. 3-4): its fields.")
    )
    members: int = field(default=50, metadata=doc("Networks (and linearisations) per seed."))
    steps: int = field(default=2**16, metadata=doc("Gradient steps at the stable rate."))
    lr_fraction: float = field(
        default=0.5, metadata=doc("Stable rate = lr_fraction * eta_critical (eq. 11), sum loss.")
    )
    paper_learning_rate: float = field(default=0.1, metadata=doc("The paper's eta (app. D.2)."))
    paper_steps: int = field(default=2**16, metadata=doc("The paper's training steps."))
    paper_lr_steps: int = field(
        default=4096, metadata=doc("Steps of the NNs at the paper's eta (0: skip).")
    )
    linearised: bool = field(default=True, metadata=doc("Compute the finite-width lin. rows."))
    test_states: int = field(default=256, metadata=doc("Fresh initial states (test split)."))
    mc_rollouts: int = field(default=64, metadata=doc("Monte Carlo rollouts per input."))
    mc_horizon: int = field(
        default=20_000, metadata=doc("Rollout step cap (the 500-step limit is not applied).")
    )
    next_action: Literal["sampled", "expected"] = field(
        default="sampled",
        metadata=doc(
            "TD target at s': 'sampled' = the logged next action (SARSA, k = 1), 'expected' = "
            "both actions weighted by pi (k = 2)."
        ),
    )
    policy_seed: int = field(default=0, metadata=doc("Seed of the policy training."))
    policy_epsilon: float = field(default=0.2, metadata=doc("Action noise of the policy."))
    policy_target_return: float = field(
        default=150.0, metadata=doc("Moderate mean return the policy training stops at.")
    )
    min_std: float = field(
        default=1e-6, metadata=doc("Floor on predictive stds before NLL/CRPS (reported).")
    )
    overwrite: bool = overwrite_option()
    checkpoint_every_s: float = checkpoint_option()
    progress: bool = progress_option()

    def __post_init__(self):
        ints = {
            "seeds": 1,
            "n_transitions": 2,
            "members": 2,
            "steps": 1,
            "paper_steps": 1,
            "paper_lr_steps": 0,
            "test_states": 1,
            "mc_rollouts": 2,
            "mc_horizon": 1,
        }
        for name, minimum in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"CartPoleConfig.{name} must be an integer >= {minimum}, got {value!r}"
                )
        if not isinstance(self.net, MLP):
            raise ValueError(f"CartPoleConfig.net must be an MLP, got {self.net!r}")
        if not 0.0 < self.lr_fraction < 1.0:
            raise ValueError(
                f"CartPoleConfig.lr_fraction must lie in (0, 1), got {self.lr_fraction}"
            )
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"CartPoleConfig.gamma must lie in [0, 1], got {self.gamma}")
        if self.next_action not in ("sampled", "expected"):
            raise ValueError(
                "CartPoleConfig.next_action must be 'sampled' or 'expected', "
                f"got {self.next_action!r}"
            )
        if not self.min_std > 0:
            raise ValueError(f"CartPoleConfig.min_std must be > 0, got {self.min_std}")
        if not self.checkpoint_every_s >= 0:
            raise ValueError(
                "CartPoleConfig.checkpoint_every_s must be >= 0 seconds, got "
                f"{self.checkpoint_every_s}"
            )


PRESETS = {
    "paper": CartPoleConfig(out="runs/cartpole-paper"),
    "quick": CartPoleConfig(
        out="runs/cartpole-quick",
        net=MLP(depth=2, width=128),
        members=8,
        steps=2**11,
        paper_lr_steps=64,
        test_states=128,
        mc_rollouts=32,
    ),
    "tiny": CartPoleConfig(
        out="runs/cartpole-tiny",
        seeds=2,
        n_transitions=48,
        net=MLP(depth=2, width=32),
        members=3,
        steps=32,
        paper_lr_steps=8,
        test_states=8,
        mc_rollouts=4,
        mc_horizon=2000,
        progress=False,
    ),
}


def _log(message: str) -> None:
    print(f"[tdntk cartpole] {message}", flush=True)


# fields that do not change the results: not part of the settings that key --out
_RUN_CONTROL = ("out", "overwrite", "checkpoint_every_s", "progress")


def _settings(cfg: CartPoleConfig) -> dict:
    """The settings that determine the results (JSON-able)."""
    settings = asdict(cfg)
    for key in _RUN_CONTROL:
        settings.pop(key)
    return settings


# ---------------------------------------------------------------------- data and truth
def make_dataset(cfg: CartPoleConfig, policy, seed: int, env=ENV_ID):
    """Collect the offline data of `policy` and encode it: (OfflineData, Features, Transitions).

    The behaviour policy is the target policy (app. D.2). Next inputs
    (``cfg.next_action``): "sampled" = (s', a') with the logged next action
    a' ~ pi(s') (SARSA; within an episode x''_i = x_{i+1}, so every next input
    is a dataset input); "expected" = both actions at s' weighted by
    ``policy.action_probs`` (expected SARSA; needs Q at actions the data never
    took at s').
    """
    data = collect(env, policy.reseeded(seed), n_transitions=cfg.n_transitions, seed=seed)
    features = Features.from_spaces(
        data.observation_space, data.action_space, standardize=data if cfg.standardize else None
    )
    if cfg.next_action == "expected":
        return data, features, to_transitions(data, features, cfg.gamma, policy=policy)
    x = features.encode(data.observations, data.actions)
    x_next = features.encode(data.next_observations, data.next_actions)
    return (
        data,
        features,
        Transitions(x, data.rewards, x_next, discounts(cfg.gamma, data.terminated)),
    )


@dataclass(frozen=True)
class EvalInputs:
    """The evaluation inputs of one seed: m = n + m_test rows.

    Attributes:
        states: (m, 4) CartPole states the rollouts start from.
        actions: (m,) first actions.
        x: (m, d) network inputs.
        splits: split name -> (m_split,) row indices.
    """

    states: np.ndarray
    actions: np.ndarray
    x: np.ndarray
    splits: dict


def eval_inputs(cfg: CartPoleConfig, data, features, policy, seed: int) -> EvalInputs:
    """Train rows: every dataset (s_i, a_i); test rows: fresh initial states, a ~ pi(s)."""
    test = initial_states(cfg.test_states, seed=10_000 + seed)
    rng = np.random.default_rng(20_000 + seed)
    probs = policy.action_probs(test.astype(np.float32))
    test_actions = sample_actions(probs, rng)
    states = np.concatenate([data.observations, test])
    actions = np.concatenate([data.actions, test_actions]).astype(np.int64)
    x = features.encode(states.astype(np.float32).astype(np.float64), actions)
    n = data.n
    starts = np.flatnonzero(np.r_[True, np.diff(data.episode_ids) != 0])
    splits = {"train": np.arange(n), "train-init": starts, "test": np.arange(n, len(states))}
    return EvalInputs(states, actions, x, splits)


# ---------------------------------------------------------------------- one seed
@dataclass(frozen=True)
class SeedResult:
    """Everything one seed produced.

    Attributes:
        seed: the seed of dataset, test states and initialisations.
        data_summary: episodes, terminated and truncated counts.
        learning_rate: the stable eta of the NNs (summed loss).
        critical_learning_rate: eq. 11 of the analytic Theta_bar (summed loss).
        max_stable_learning_rate: 2 / l_max (summed loss).
        eigenvalues: (l_min, l_max) of Theta_bar.
        times: method key -> the closed form's t at `learning_rate`.
        truth: `MonteCarloReturns` on the m evaluation inputs.
        inputs: `EvalInputs`.
        predictions: method key -> (mean (m,), std (m,)); NaN where diverged.
        members: method key -> (E, m) member values (ensembles only).
        diverged_at: method key -> first recorded step with a non-finite or
            exploding loss, or None.
        losses: method key -> (steps (R,), loss (R, E)) of the NN trainings.
        wall_times: stage -> seconds.
        policy_value: J of the TD estimate over the dataset's episode starts: mean,
            calibrated and ensemble-only 95 % intervals, stds, groups (`_td_infinite`).
    """

    seed: int
    data_summary: dict
    learning_rate: float
    critical_learning_rate: float
    max_stable_learning_rate: float
    eigenvalues: tuple
    times: dict
    truth: MonteCarloReturns
    inputs: EvalInputs
    predictions: dict
    members: dict
    diverged_at: dict
    losses: dict
    wall_times: dict
    policy_value: dict = field(default_factory=dict)


def _divergence_step(steps, loss) -> int | None:
    """First recorded step whose loss is non-finite or 1e6 times the initial loss."""
    loss = np.asarray(loss, np.float64)
    bad = ~np.isfinite(loss) | (loss > 1e6 * np.maximum(loss[:1], 1e-12))
    rows = np.flatnonzero(bad.any(axis=1))
    return int(steps[rows[0]]) if rows.size else None


def _train_nns(cfg, data: Transitions, x_eval, eta, steps, seed, ckpt=None) -> dict:
    """The NNs at rate eta: final members q (E, m), recorded steps (R,) and loss (R, E)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow of a diverging run
        # the report gives the rates and where the paper's rate diverges
        warnings.simplefilter("ignore", LearningRateWarning)
        warnings.simplefilter("ignore", DivergenceWarning)
        res = train_ensemble(
            cfg.net, data, Schedule(eta), steps, cfg.members, x_eval, seed=seed,
            progress=cfg.progress, checkpoint_dir=ckpt, resume=ckpt is not None,
            checkpoint_every_s=cfg.checkpoint_every_s,
        )  # fmt: skip
    return {"q": res.q[-1], "steps": res.steps, "loss": res.loss}


def run_seed(cfg: CartPoleConfig, policy, seed: int, stages: Stages | None = None) -> SeedResult:
    """Dataset, ground truth, the methods and their predictions for one seed.

    `stages` saves each part and loads those an earlier run finished (None: save nothing).
    """
    stages = Stages(None, _log) if stages is None else stages
    t0 = time.perf_counter()
    data, features, transitions = make_dataset(cfg, policy, seed)
    inputs = eval_inputs(cfg, data, features, policy, seed)
    wall = {"dataset": time.perf_counter() - t0}
    name = f"seed{seed}"
    truth = stages.run(
        f"{name}-truth", lambda: monte_carlo_returns(
            policy, inputs.states, inputs.actions, gamma=cfg.gamma, rollouts=cfg.mc_rollouts,
            horizon=cfg.mc_horizon, seed=30_000 + seed,
        ), f"Monte Carlo ground truth, {cfg.mc_rollouts} rollouts per input",
    )  # fmt: skip
    ntk = stages.run(
        f"{name}-ntk", lambda: _infinite_width(cfg, transitions, inputs.x), "closed form (eq. 10)"
    )
    td_predictions, policy_value = stages.run(
        f"{name}-td", lambda: _td_infinite(cfg, data, features, transitions, inputs, policy),
        "TD at t = inf with jackknife intervals and the policy value",
    )  # fmt: skip
    wall["ground truth"] = stages.seconds(f"{name}-truth")
    wall["ntk"] = stages.seconds(f"{name}-ntk")
    wall["td"] = stages.seconds(f"{name}-td")
    eta = ntk["learning_rate"]
    predictions = dict(ntk["predictions"]) | dict(td_predictions)
    members, losses, diverged = {}, {}, {}
    runs = (("nn", eta, cfg.steps), ("nn_paper_lr", cfg.paper_learning_rate, cfg.paper_lr_steps))
    for key, rate, steps in runs:
        if steps == 0:
            continue
        stage = f"{name}-{key}"
        ckpt = stages.checkpoint_dir(stage, _settings(cfg))
        res = stages.run(
            stage, lambda r=rate, n=steps, c=ckpt: _train_nns(cfg, transitions, inputs.x, r, n,
                                                              seed, c),
            f"{cfg.members} networks, eta = {rate:.3g}, {steps} steps",
        )  # fmt: skip
        wall[key] = stages.seconds(stage)
        members[key], predictions[key] = res["q"], fit_gaussian(res["q"])
        losses[key] = (res["steps"], res["loss"])
        diverged[key] = _divergence_step(res["steps"], res["loss"])
    if cfg.linearised:  # finite-width linearisations of the NNs' own initialisations (eq. 8, 5)
        q = stages.run(
            f"{name}-lin", lambda: _linearised(cfg, transitions, inputs.x, ntk, seed),
            "finite-width linearisations (eq. 8, 5)",
        )  # fmt: skip
        for i, key in enumerate(["lin", "lin_paper", "lin_paper_mean"]):
            members[key], predictions[key] = q[:, i], fit_gaussian(q[:, i])
        wall["lin"] = stages.seconds(f"{name}-lin")
    return SeedResult(
        seed=seed,
        data_summary=_data_summary(cfg, data, features),
        learning_rate=float(eta),
        critical_learning_rate=ntk["critical_learning_rate"],
        max_stable_learning_rate=ntk["max_stable_learning_rate"],
        eigenvalues=ntk["eigenvalues"],
        times=ntk["times"],
        truth=truth,
        inputs=inputs,
        predictions=predictions,
        members=members,
        diverged_at=diverged,
        losses=losses,
        wall_times=wall,
        policy_value=policy_value,
    )


def _linearised(cfg: CartPoleConfig, transitions: Transitions, x, ntk: dict, seed: int):
    """eq. 8 and 5 for the NNs' own initialisations at the three closed-form times: (E, 3, m)."""
    params0 = init_ensemble(cfg.net, transitions.input_dim, cfg.members, seed)  # the NNs' own
    times = ntk["times"]
    return np.asarray(linearised_ensemble(
        cfg.net, params0, transitions, x, [times["matched"], times["paper"], times["paper_mean"]],
        Schedule(ntk["learning_rate"]), progress=cfg.progress,
    ))  # fmt: skip


def _td_infinite(cfg: CartPoleConfig, data, features, transitions, inputs, policy):
    """The TD estimator at t = inf: ({td_inf, td_inf_jk: (mean, std)}, policy value dict).

    Discrete time with tau = 1 at half the critical rate: the t = inf fixed point (mean and
    covariance) is that of any convergent rate and tau > 0, and its stability check needs
    the eigenvalues of an n x n matrix where continuous time needs 2n x 2n. The
    calibrated std adds the jackknife variance over groups of episodes (closed-form
    refits) and is scaled by t_{G-1, 0.975} / z_{0.975}, so that the Gaussian 95 %
    interval the table scores is the t interval.
    """
    base = TDNTK(cfg.net, transitions, Schedule(1.0, SoftTarget(1.0), "discrete"))
    rate = 0.5 * base.critical_learning_rate
    model = base.with_schedule(Schedule(rate, SoftTarget(1.0), "discrete"))
    starts = inputs.splits["train-init"]
    x0 = features.encode_all_actions(inputs.states[starts])  # (E, 2, d): V(s0) = pi . Q
    w0 = np.asarray(policy.action_probs(inputs.states[starts].astype(np.float32)), np.float64)
    d = inputs.x.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        pred = model.predict(inputs.x, np.inf, full_cov=False)
        start = model.predict(x0.reshape(-1, d), np.inf, full_cov=True)
    mean, ens = pred.mean[0], pred.std[0]
    e = starts.size
    w_j = (w0 / e).reshape(-1)
    j = float(w_j @ start.mean[0])
    j_ens = quadratic_std(w_j, start.cov[0])
    groups, g = episode_groups(data.episode_ids, JACKKNIFE_GROUPS, 0)
    out = {"td_inf": (mean, ens)}
    value = {"mean": j, "ensemble_std": j_ens, "episodes": int(e), "groups": int(g),
             "converges": bool(model.dynamics.converges)}  # fmt: skip
    lo, hi = interval(j, j_ens, np.inf)
    value["ensemble_interval_95"] = [float(lo), float(hi)]
    if g < 2 or not np.all(np.isfinite(mean)):
        out["td_inf_jk"] = (mean, np.full_like(mean, np.nan))
        value.update(sampling_std=np.nan, std=np.nan, interval_95=[np.nan, np.nan])
        return out, value
    resampler = FixedPointResampler(
        cfg.net, transitions, np.concatenate([inputs.x, x0.reshape(-1, d)])
    )
    m = inputs.x.shape[0]
    episode_of_start = groups[np.r_[0, np.flatnonzero(np.diff(data.episode_ids) != 0) + 1]]
    reps_q, reps_j = np.empty((g, m)), np.empty(g)
    for k in range(g):
        q = resampler.predict((groups != k).astype(np.float64))
        reps_q[k] = q[:m]
        v0 = np.einsum("ik,ik->i", w0, q[m:].reshape(e, 2))
        reps_j[k] = v0[episode_of_start != k].mean()
    scale = float(stats.t.ppf(0.975, g - 1) / stats.norm.ppf(0.975))
    out["td_inf_jk"] = (mean, scale * np.hypot(ens, jackknife_std(reps_q)))
    sampling = float(jackknife_std(reps_j))
    std = float(np.hypot(j_ens, sampling))
    lo, hi = interval(j, std, g - 1)
    value.update(sampling_std=sampling, std=std, interval_95=[float(lo), float(hi)])
    return out, value


def _true_policy_value(cfg: CartPoleConfig, policy) -> dict:
    """J(pi) from Monte Carlo episodes from fresh initial states (no time limit)."""
    mc = monte_carlo_returns(
        policy, initial_states(TRUE_J_EPISODES, seed=40_000), gamma=cfg.gamma, rollouts=1,
        horizon=cfg.mc_horizon, seed=50_000,
    )  # fmt: skip
    return {
        "mean": float(mc.mean.mean()),
        "std_error": float(mc.mean.std(ddof=1) / np.sqrt(mc.mean.size)),
        "episodes": TRUE_J_EPISODES,
        "cut_fraction": float(mc.cut_fraction),
    }


def _infinite_width(cfg: CartPoleConfig, transitions: Transitions, x) -> dict:
    """eq. 10 at the NNs' stable rate: {"learning_rate": eta, "critical_learning_rate",
    "max_stable_learning_rate", "eigenvalues": (l_min, l_max) of Theta_bar, "times":
    {name: t}, "predictions": {method: (mean (m,), std (m,))}}.

    Continuous time depends on eta t only, so the paper's eta t is reached at this
    rate too.
    """
    base = TDNTK(cfg.net, transitions, Schedule(1.0))  # the critical rate needs no rate
    eta = cfg.lr_fraction * base.critical_learning_rate
    model = base.with_schedule(Schedule(eta))
    n = transitions.n
    times = {
        "matched": float(cfg.steps),
        "paper": cfg.paper_learning_rate * cfg.paper_steps / eta,
        "paper_mean": cfg.paper_learning_rate * cfg.paper_steps / n / eta,
        "inf": np.inf,
    }
    pred = model.predict(x, list(times.values()), full_cov=False)
    keys = ["ntk", "ntk_paper", "ntk_paper_mean", "ntk_inf"]
    ev = model.spectrum.eigenvalues
    return {
        "learning_rate": float(eta),
        "critical_learning_rate": float(model.critical_learning_rate),
        "max_stable_learning_rate": float(model.max_stable_learning_rate),
        "eigenvalues": (float(ev[0]), float(ev[-1])),
        "times": times,
        "predictions": {key: (pred.mean[i], pred.std[i]) for i, key in enumerate(keys)},
    }


def _data_summary(cfg: CartPoleConfig, data, features) -> dict:
    return {
        "transitions": int(data.n),
        "episodes": int(data.num_episodes),
        "terminated": int(data.terminated.sum()),
        "truncated": int(data.truncated.sum()),
        "truncated_by_time_limit": int(np.sum(data.truncated & (_episode_lengths(data) >= 500))),
        "standardized": bool(cfg.standardize),
        "obs_mean": features.obs_mean.tolist(),
        "obs_scale": features.obs_scale.tolist(),
    }


def _episode_lengths(data) -> np.ndarray:
    """(n,) the step number (1-based) of each transition within its episode."""
    ids = data.episode_ids
    starts = np.r_[0, np.flatnonzero(np.diff(ids) != 0) + 1]
    pos = np.arange(ids.size) - np.repeat(starts, np.diff(np.r_[starts, ids.size]))
    return pos + 1


# ---------------------------------------------------------------------- scoring
def score_rows(result: SeedResult, min_std: float) -> list[dict]:
    """One row per (split, method) with the `tdntk.metrics.Scores` summary."""
    rows = []
    y = result.truth.mean
    for split, index in result.inputs.splits.items():
        for key in METHODS:
            if key not in result.predictions:
                continue
            mean, std = (np.asarray(a)[index] for a in result.predictions[key])
            row = {"seed": result.seed, "split": split, "method": key, "points": int(index.size)}
            finite = np.all(np.isfinite(mean)) and np.all(np.isfinite(std))
            if result.diverged_at.get(key) is not None or not finite:
                row.update({k: np.nan for k in _SCORE_KEYS})
                row["floored"] = 0
            else:
                row.update(score_gaussian(mean, np.maximum(std, min_std), y[index]).summary())
                row["floored"] = int(np.sum(std < min_std))
            row["diverged_at"] = result.diverged_at.get(key)
            rows.append(row)
    return rows


_SCORE_KEYS = (
    "rmse",
    "nll",
    "coverage_68",
    "coverage_95",
    "crps",
    "abs_error_mean",
    "abs_error_std",
    "nll_std",
)


# ---------------------------------------------------------------------- the experiment
@dataclass(frozen=True)
class CartPoleResults:
    """The whole experiment: config, policy, per-seed results and score rows."""

    config: CartPoleConfig
    policy: PolicyTraining
    seeds: list
    rows: list
    wall_times: dict
    methods: dict = field(default_factory=lambda: dict(METHODS))
    paper_config: CartPoleConfig | None = None
    true_policy_value: dict | None = None


def projected_seconds(cfg: CartPoleConfig, policy) -> float:
    """Projected seconds of the NN trainings and linearisations, from a timed short run.

    Times 16 steps of the ensemble on a dataset of the configured size (after
    compilation) and one linearisation, then scales linearly in steps and members.
    """

    _, _, data = make_dataset(cfg, policy, 0)
    x = data.x[:8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_ensemble(cfg.net, data, Schedule(1e-4), 2, cfg.members, x, progress=False)
        timed = train_ensemble(cfg.net, data, Schedule(1e-4), 16, cfg.members, x, progress=False)
        t0 = time.perf_counter()
        if cfg.linearised:
            linearised_ensemble(
                cfg.net, timed.params0, data, x, [1.0], Schedule(1e-4), progress=False
            )
    lin = (time.perf_counter() - t0) * (cfg.n_transitions + cfg.test_states) / cfg.n_transitions
    nn = timed.wall_time / 16 * (cfg.steps + cfg.paper_lr_steps)
    return cfg.seeds * (nn + lin)


def simulate(cfg: CartPoleConfig, stages: Stages | None = None) -> CartPoleResults:
    """Policy, then every seed; returns the results (writes nothing but `stages`' files).

    `stages` saves each part and loads those an earlier run finished (None: save nothing).
    """
    stages = Stages(None, _log) if stages is None else stages
    policy = stages.run(
        "policy", lambda: train_cartpole_policy(
            seed=cfg.policy_seed, epsilon=cfg.policy_epsilon,
            target_return=cfg.policy_target_return,
        ), "training the policy (cross-entropy method)",
    )  # fmt: skip
    _log(
        f"policy: {policy.method}; return {policy.returns.mean():.1f} +- "
        f"{policy.returns.std():.1f} (500-step limit, {policy.returns.size} episodes)"
    )
    if cfg.n_transitions >= 1024 or cfg.steps * cfg.members >= 2**20:
        projected = stages.run(
            "projection", lambda: projected_seconds(cfg, policy.policy), "timing a short run"
        )
        _log(f"projected time of NN training and linearisations: {projected / 60:.1f} min")
    seeds, rows = [], []
    for seed in range(cfg.seeds):
        result = run_seed(cfg, policy.policy, seed, stages)
        seeds.append(result)
        rows.extend(score_rows(result, cfg.min_std))
        _log(
            f"seed {seed}: eta = {result.learning_rate:.3g} (critical "
            f"{result.critical_learning_rate:.3g}), {sum(result.wall_times.values()):.0f} s"
        )
    truth = stages.run(
        "true-policy-value", lambda: _true_policy_value(cfg, policy.policy),
        f"J(pi) from {TRUE_J_EPISODES} Monte Carlo episodes",
    )  # fmt: skip
    total = sum(stages.seconds(name) for name in stages.times)  # compute seconds of every stage
    wall = {"policy": policy.wall_time, "total": total}
    return CartPoleResults(cfg, policy, seeds, rows, wall, dict(METHODS), PRESETS["paper"], truth)


def run(cfg: CartPoleConfig) -> CartPoleResults:
    """Run the experiment in ``cfg.out`` (resuming an earlier run of the same settings), write
    table, figures, report.md and stages.json there, print the time per stage."""
    from ..report.cartpole import write_report

    _log(f"settings: {json.dumps(asdict(cfg))}")
    return run_in_stages(cfg.out, "cartpole", _settings(cfg), cfg.overwrite, _log,
                         lambda stages: simulate(cfg, stages), write_report)  # fmt: skip


COMMAND = Command(
    config=CartPoleConfig,
    run=run,
    presets=PRESETS,
    default_preset="quick",
    help=(
        "CartPole offline policy evaluation (paper section 5.2, Table 1): trained ensembles vs "
        "TD-NTK (finite and infinite width, with calibrated intervals and the policy value) "
        "against Monte Carlo returns, over several seeds; writes table.md/table.csv, figures "
        "and report.md to --out. '--preset quick' takes about 6 min on a quiet 2-core CPU; "
        "'--preset paper' is GPU-scale and prints a projected time first; '--preset tiny' "
        "takes seconds. Rerunning the same command resumes an interrupted run; --out must be "
        "new, empty or an earlier result."
    ),
)
