"""The toy chain environment of the paper (sec. 5.1, app. D.1, fig. 5).

The state is one number s; the only action moves it to ``s' = s + 0.25``.

**The reading we implement.** The paper states the rules three ways that do
not agree at s in [1, 1.25) (theory page, "Known loose ends"): sec. 5.1 pays a
reward "when the action results in a new state that exceeds s = 1"; app. D.1
writes ``r(s) = 1 if s in [1, 1.25)`` and ends the episode "when s' >= 1.25";
fig. 5 ends it on "an action taken from s >= 1"; and both sections give the
true value ``V(s) = 1 for s < 1, 0 otherwise`` (gamma = 1). Read as a reward
for *being* in [1, 1.25), the value would be 1 up to s = 1.25, contradicting
the stated value. We therefore read D.1's r as a reward on *arrival*:

* reward ``1`` iff ``s < 1 <= s'`` (the step that crosses s = 1, i.e. D.1's
  ``r(s')`` with ``s' in [1, 1.25)``; sec. 5.1's "exceeds" taken as ">=");
* ``terminated`` iff ``s >= 1`` (fig. 5; equivalently D.1's ``s' >= 1.25``),
  and that last step pays 0.

Every statement of the paper then holds, including its value function. The
ground truth used by the experiments is computed by rolling this environment
forward (`rollout_value`), not from that formula.

States below 0 are outside the paper's state space; ``min_state`` lowers the
observation bound so the chain can be rolled out from the out-of-distribution
states of fig. 3 (the dynamics extend unchanged).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from ..data import Transitions

__all__ = [
    "ToyChainEnv",
    "STEP",
    "THRESHOLD",
    "dataset_states",
    "toy_transitions",
    "rollout_value",
    "true_values",
]

STEP = 0.25
"""How far the single action moves the state."""
THRESHOLD = 1.0
"""Crossing it pays 1; acting from at or above it terminates."""


class ToyChainEnv(gym.Env):
    """The one-action chain: ``s' = s + 0.25``, reward 1 on crossing s = 1, end after.

    Args:
        start_state: the state `reset` starts from when no ``options={"state": s}``
            is given (the paper does not say; 0 starts at the chain's beginning).
        min_state: lowest allowed start state (the paper's S is s >= 0; lower
            it to roll out from negative states).
        max_state: highest allowed start state (the paper's S is unbounded;
            a finite bound keeps the observation space finite).

    Observation: ``Box(min_state, max_state + 0.25, (1,), float64)`` holding s
    (no episode leaves it: acting from s >= 1 ends the episode). Action:
    ``Discrete(1)``. ``reset(options={"state": s})`` starts from any s in
    [min_state, max_state].
    """

    metadata = {"render_modes": []}

    def __init__(self, start_state: float = 0.0, min_state: float = 0.0, max_state: float = 10.0):
        if not (np.isfinite(min_state) and np.isfinite(max_state) and min_state <= max_state):
            raise ValueError(
                "ToyChainEnv: min_state <= max_state must both be finite, "
                f"got min_state={min_state!r}, max_state={max_state!r}"
            )
        self.min_state = float(min_state)
        self.max_state = float(max_state)
        self.observation_space = gym.spaces.Box(
            low=self.min_state, high=self.max_state + STEP, shape=(1,), dtype=np.float64
        )
        self.action_space = gym.spaces.Discrete(1)
        self.start_state = self._check_state(start_state, "start_state")
        self._state: float | None = None
        self._done = False

    def _check_state(self, s, name: str) -> float:
        try:
            value = float(np.asarray(s, dtype=np.float64).reshape(()))
        except (TypeError, ValueError):
            raise ValueError(f"ToyChainEnv: {name} must be one number, got {s!r}") from None
        if not self.min_state <= value <= self.max_state:
            raise ValueError(
                f"ToyChainEnv: {name} must lie in [min_state, max_state] = "
                f"[{self.min_state:g}, {self.max_state:g}], got {value!r} "
                "(pass min_state= / max_state= to allow other states)"
            )
        return value

    def _observation(self) -> np.ndarray:
        return np.array([self._state], dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start from ``options["state"]`` if given, else `start_state`. Returns (obs (1,), {})."""
        super().reset(seed=seed)
        state = (options or {}).get("state", self.start_state)
        self._state = self._check_state(state, 'options["state"]')
        self._done = False
        return self._observation(), {}

    def step(self, action):
        """Move s -> s + 0.25; reward 1 iff s < 1 <= s'; terminated iff s >= 1."""
        if self._state is None or self._done:
            raise RuntimeError("ToyChainEnv.step: call reset() first (the episode has ended)")
        if not self.action_space.contains(action):
            raise ValueError(f"ToyChainEnv.step: action must be 0 (Discrete(1)), got {action!r}")
        s = self._state
        s_next = s + STEP
        reward = 1.0 if s < THRESHOLD <= s_next else 0.0
        terminated = bool(s >= THRESHOLD)
        self._state = s_next
        self._done = terminated
        return self._observation(), reward, terminated, False, {}


def _env_covering(states: np.ndarray) -> ToyChainEnv:
    """A `ToyChainEnv` whose allowed start states include every entry of `states` (m,)."""
    if states.size == 0 or not np.all(np.isfinite(states)):
        raise ValueError(f"states must be a non-empty array of finite numbers, got {states!r}")
    low, high = min(0.0, float(states.min())), max(10.0, float(states.max()))
    return ToyChainEnv(min_state=low, max_state=high)


def dataset_states(n: int = 21, low: float = 0.0, high: float = 1.25) -> np.ndarray:
    """The paper's dataset states ``linspace(0, 1.25, 21)`` (app. D.1): (n,)."""
    if n < 1:
        raise ValueError(f"dataset_states: n must be >= 1, got {n}")
    return np.linspace(low, high, n)


def toy_transitions(states, gamma: float = 1.0) -> Transitions:
    """One transition from each state, produced by stepping `ToyChainEnv`.

    Input features are the state itself (d = 1; the single action needs no
    encoding). Terminated transitions get discount 0 (theory page, Conventions).

    Args:
        states: (n,) start states.
        gamma: discount.
    Returns:
        `Transitions` with x (n, 1), x_next (n, 1), reward (n,), discount (n,).
    """
    states = np.asarray(states, dtype=np.float64).reshape(-1)
    env = _env_covering(states)
    x_next, reward, terminated = [], [], []
    for s in states:
        env.reset(options={"state": s})
        obs, r, term, trunc, _ = env.step(0)
        x_next.append(obs)
        reward.append(r)
        terminated.append(term)
    return Transitions.from_gamma(
        states[:, None], np.array(reward), np.array(x_next), gamma, np.array(terminated)
    )


def rollout_value(env: gym.Env, state: float, gamma: float = 1.0, max_steps: int = 10_000):
    """Discounted return of the (deterministic) chain started at `state`, by rolling `env`.

    Raises if the episode has not terminated after `max_steps` steps.
    """
    env.reset(options={"state": state})
    total, discount = 0.0, 1.0
    for _ in range(max_steps):
        _, reward, terminated, truncated, _ = env.step(0)
        total += discount * reward
        discount *= gamma
        if terminated or truncated:
            return total
    raise RuntimeError(
        f"rollout_value: no termination within max_steps={max_steps} from state {state!r}"
    )


def true_values(states, gamma: float = 1.0, max_steps: int = 10_000) -> np.ndarray:
    """Ground-truth values V(s) (m,) at `states` (m,), each by `rollout_value`."""
    states = np.asarray(states, dtype=np.float64).reshape(-1)
    env = _env_covering(states)
    return np.array([rollout_value(env, s, gamma, max_steps) for s in states])
