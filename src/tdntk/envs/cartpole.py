"""Monte Carlo returns of a policy on CartPole from given states (the ground truth of sec. 5.2).

The rollouts step many CartPole copies at once with `CartPolePhysics`, the
equations of Gymnasium's ``CartPoleEnv.step`` applied to an (N, 4) array of
states (constants read from the Gymnasium environment; equality with
Gymnasium step by step is tested). Policies see the float32 observation, as
they do in Gymnasium.

Time limit. ``horizon`` is the number of steps a rollout may take from its
start state; a rollout still alive after ``horizon`` steps is cut (its return
is the sum so far) and counted in `MonteCarloReturns.cut_fraction`. Two uses:

* truncation treated as continuing (the convention of `tdntk.data.discounts`:
  a time-limit transition keeps gamma, so the TD fixed point of a time-unaware
  Q is the value of the process *without* a time limit): pass a horizon far
  beyond the episode's time limit and check that ``cut_fraction`` is ~0;
* a time limit counted from the start state: pass that limit (e.g. 500).

Shapes: m start states, R rollouts per state, N = m R simulated copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..datasets.policies import sample_actions

__all__ = [
    "CartPolePhysics",
    "MonteCarloReturns",
    "simulate_cartpole",
    "monte_carlo_returns",
    "initial_states",
    "episode_returns",
    "batch_actions",
]

# Gymnasium's CartPole reset draws each state component from U(-0.05, 0.05).
RESET_BOUND = 0.05


@dataclass(frozen=True)
class CartPolePhysics:
    """CartPole's constants and its Euler step, vectorised over states (Gymnasium's equations)."""

    gravity: float = 9.8
    masscart: float = 1.0
    masspole: float = 0.1
    length: float = 0.5
    force_mag: float = 10.0
    tau: float = 0.02
    theta_threshold_radians: float = 12 * 2 * np.pi / 360
    x_threshold: float = 2.4
    kinematics_integrator: str = "euler"

    @classmethod
    def from_env(cls, env=None) -> CartPolePhysics:
        """Read the constants from a Gymnasium CartPole (default: CartPole-v1)."""
        if env is None:
            import gymnasium

            env = gymnasium.make("CartPole-v1")
        u = env.unwrapped
        return cls(
            gravity=float(u.gravity),
            masscart=float(u.masscart),
            masspole=float(u.masspole),
            length=float(u.length),
            force_mag=float(u.force_mag),
            tau=float(u.tau),
            theta_threshold_radians=float(u.theta_threshold_radians),
            x_threshold=float(u.x_threshold),
            kinematics_integrator=str(u.kinematics_integrator),
        )

    def step(self, state, action) -> tuple[np.ndarray, np.ndarray]:
        """One step of N copies: state (N, 4) float64, action (N,) in {0, 1} -> (N, 4), (N,) bool.

        Returns the next state and whether it is terminal (pole or cart out of bounds);
        every step, the terminating one included, earns reward 1.
        """
        x, x_dot, theta, theta_dot = (state[:, i] for i in range(4))
        total_mass = self.masspole + self.masscart
        polemass_length = self.masspole * self.length
        force = np.where(np.asarray(action) == 1, self.force_mag, -self.force_mag)
        costheta, sintheta = np.cos(theta), np.sin(theta)
        temp = (force + polemass_length * np.square(theta_dot) * sintheta) / total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / total_mass)
        )
        xacc = temp - polemass_length * thetaacc * costheta / total_mass
        if self.kinematics_integrator == "euler":
            x, x_dot = x + self.tau * x_dot, x_dot + self.tau * xacc
            theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc
        else:
            x_dot = x_dot + self.tau * xacc
            x = x + self.tau * x_dot
            theta_dot = theta_dot + self.tau * thetaacc
            theta = theta + self.tau * theta_dot
        nxt = np.stack([x, x_dot, theta, theta_dot], axis=1)
        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        return nxt, terminated


def initial_states(m: int, seed: int = 0) -> np.ndarray:
    """(m, 4) float64 draws from CartPole's initial-state distribution U(-0.05, 0.05)^4."""
    if m < 0:
        raise ValueError(f"initial_states: m must be >= 0, got {m}")
    return np.random.default_rng(seed).uniform(-RESET_BOUND, RESET_BOUND, size=(m, 4))


def batch_actions(policy, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Actions (N,) of `policy` at float32 observations (N, 4).

    A policy with ``action_probs(obs (N, 4)) -> (N, A)`` is sampled with `rng`
    (`tdntk.datasets.policies.sample_actions`, reproducible); any other callable
    is called on the batch and, if it does not return (N,) actions, once per row.
    """
    n = obs.shape[0]
    probs_fn = getattr(policy, "action_probs", None)
    if probs_fn is not None:
        return sample_actions(np.asarray(probs_fn(obs), np.float64).reshape(n, -1), rng)
    try:
        out = np.asarray(policy(obs))
    except Exception:  # noqa: BLE001 - a per-observation policy may reject a batch
        out = None
    if out is not None and out.shape == (n,):
        return out.astype(np.int64)
    return np.array([int(policy(o)) for o in obs], dtype=np.int64)


def simulate_cartpole(
    states,
    choose: Callable[[np.ndarray, np.ndarray], np.ndarray],
    first_actions=None,
    gamma: float = 1.0,
    horizon: int = 500,
    physics: CartPolePhysics | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run N CartPole copies until termination or `horizon` steps, whichever comes first.

    Args:
        states: (N, 4) start states (float64 physical states).
        choose: ``choose(obs (k, 4) float32, index (k,)) -> actions (k,)`` for the
            k copies still running (`index` says which of the N they are).
        first_actions: optional (N,) actions of the first step (for Q(s, a));
            ``None`` lets `choose` pick them.
        gamma: discount in [0, 1]; the return is ``sum_{t < L} gamma^t``.
        horizon: at most this many steps per copy (>= 1).
    Returns:
        returns (N,), lengths (N,) int steps taken, terminated (N,) bool
        (False: cut by the horizon).
    """
    physics = physics or CartPolePhysics()
    state = np.array(states, dtype=np.float64, copy=True)
    if state.ndim != 2 or state.shape[1] != 4:
        raise ValueError(f"simulate_cartpole: states must have shape (N, 4), got {state.shape}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"simulate_cartpole: gamma must lie in [0, 1], got {gamma!r}")
    if horizon < 1:
        raise ValueError(f"simulate_cartpole: horizon must be >= 1, got {horizon!r}")
    n = state.shape[0]
    if first_actions is not None:
        first_actions = np.asarray(first_actions).astype(np.int64).reshape(-1)
        if first_actions.shape != (n,):
            raise ValueError(
                f"simulate_cartpole: first_actions must have shape ({n},), "
                f"got {first_actions.shape}"
            )
    returns = np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    terminated = np.zeros(n, dtype=bool)
    active = np.arange(n)
    discount = 1.0
    for step in range(horizon):
        if active.size == 0:
            break
        s = state[active]
        if step == 0 and first_actions is not None:
            a = first_actions[active]
        else:
            a = np.asarray(choose(s.astype(np.float32), active)).reshape(-1)
        s, done = physics.step(s, a)
        returns[active] += discount
        lengths[active] += 1
        terminated[active[done]] = True
        state[active] = s
        active = active[~done]
        discount *= gamma
    return returns, lengths, terminated


@dataclass(frozen=True)
class MonteCarloReturns:
    """Monte Carlo estimates of the expected return from m start states.

    Attributes:
        mean: (m,) average return over the rollouts (the ground truth).
        std: (m,) standard deviation of the return over rollouts (0 for a
            deterministic policy).
        std_error: (m,) ``std / sqrt(rollouts)``, the error of `mean`.
        mean_length: (m,) average number of steps.
        cut_fraction: fraction of all rollouts cut by the horizon (not terminated).
        rollouts: R, rollouts per state.
        horizon: step limit per rollout.
        gamma: the discount.
    """

    mean: np.ndarray
    std: np.ndarray
    std_error: np.ndarray
    mean_length: np.ndarray
    cut_fraction: float
    rollouts: int
    horizon: int
    gamma: float


def monte_carlo_returns(
    policy,
    states,
    actions=None,
    *,
    gamma: float = 1.0,
    rollouts: int = 1,
    horizon: int = 10_000,
    seed: int = 0,
    physics: CartPolePhysics | None = None,
    chunk: int = 1 << 16,
) -> MonteCarloReturns:
    """Expected discounted return of `policy` from each state (and first action), by rollouts.

    Q(s, a) if `actions` is given (the first step takes it, `policy` the rest),
    V(s) otherwise. A stochastic policy (one with ``action_probs``) is sampled
    with a generator seeded by `seed`; repeat with ``rollouts`` > 1 and read
    ``std_error``.

    Args:
        policy: ``policy(obs)`` or an object with ``action_probs(obs (N, 4)) -> (N, A)``.
        states: (m, 4) start states.
        actions: (m,) first actions or None.
        gamma: discount in [0, 1].
        rollouts: R >= 1 rollouts per state.
        horizon: step limit per rollout (see the module docstring on time limits).
        seed: seed of the action sampling.
        chunk: at most this many copies simulated at once (bounds memory).
    """
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != 4:
        raise ValueError(f"monte_carlo_returns: states must have shape (m, 4), got {states.shape}")
    if rollouts < 1:
        raise ValueError(f"monte_carlo_returns: rollouts must be >= 1, got {rollouts!r}")
    m = states.shape[0]
    if actions is not None:
        actions = np.asarray(actions).astype(np.int64).reshape(-1)
        if actions.shape != (m,):
            raise ValueError(
                f"monte_carlo_returns: actions must have shape ({m},) like states, "
                f"got {actions.shape}"
            )
    rng = np.random.default_rng(seed)
    physics = physics or CartPolePhysics()
    all_states = np.repeat(states, rollouts, axis=0)
    all_actions = None if actions is None else np.repeat(actions, rollouts)
    returns = np.empty(m * rollouts)
    lengths = np.empty(m * rollouts)
    cut = 0
    for start in range(0, m * rollouts, chunk):
        sl = slice(start, start + chunk)
        r, length, term = simulate_cartpole(
            all_states[sl],
            lambda obs, _index: batch_actions(policy, obs, rng),
            None if all_actions is None else all_actions[sl],
            gamma=gamma,
            horizon=horizon,
            physics=physics,
        )
        returns[sl], lengths[sl] = r, length
        cut += int(np.count_nonzero(~term))
    returns = returns.reshape(m, rollouts)
    std = returns.std(axis=1, ddof=1) if rollouts > 1 else np.zeros(m)
    return MonteCarloReturns(
        mean=returns.mean(axis=1),
        std=std,
        std_error=std / np.sqrt(rollouts),
        mean_length=lengths.reshape(m, rollouts).mean(axis=1),
        cut_fraction=cut / (m * rollouts),
        rollouts=int(rollouts),
        horizon=int(horizon),
        gamma=float(gamma),
    )


def episode_returns(
    policy,
    episodes: int,
    seed: int = 0,
    time_limit: int = 500,
    physics: CartPolePhysics | None = None,
) -> np.ndarray:
    """Undiscounted returns (episodes,) of whole episodes from CartPole's initial states.

    ``time_limit`` = 500 is CartPole-v1's; pass a larger one for the time to failure.
    """
    rng = np.random.default_rng(seed)
    states = rng.uniform(-RESET_BOUND, RESET_BOUND, size=(episodes, 4))
    returns, _, _ = simulate_cartpole(
        states,
        lambda obs, _index: batch_actions(policy, obs, rng),
        horizon=time_limit,
        physics=physics,
    )
    return returns
