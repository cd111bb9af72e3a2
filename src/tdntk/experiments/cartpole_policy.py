"""The CartPole policy to evaluate: a noisy linear policy trained by the cross-entropy method.

Section 5.2 evaluates a fixed policy pi_alpha, trained beforehand (app. D.2).
The paper does not say how; here it is `train_cartpole_policy`:

* the policy is linear in the observation, ``greedy(s) = argmax_a (W s + b)_a``,
  made stochastic by fixed action noise: with probability ``epsilon`` the
  action is uniform, so ``pi(a | s) = (1 - epsilon) 1{a = greedy(s)} + epsilon / A``;
* the greedy weights are trained by the cross-entropy method (a Gaussian
  search distribution over (W, b); each iteration keeps the best
  ``elite_fraction`` of a population scored by the mean time-limited return of
  the *noisy* policy, and refits the Gaussian to them);
* training stops at a moderate return: after each iteration the mean of the
  search distribution is scored on fresh episodes, and the iterate whose score
  is closest to ``target_return`` is returned (training stops once one reaches
  it). So the policy is neither random nor perfect, and its values differ
  between states (a perfect policy has value 500 - t everywhere).

Everything is seeded and vectorised (`tdntk.envs.cartpole.simulate_cartpole`): a
few seconds on one CPU core.

Shapes: A actions, o observation width, n observations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..datasets.policies import sample_actions
from ..envs.cartpole import RESET_BOUND, CartPolePhysics, episode_returns, simulate_cartpole

__all__ = ["LinearPolicy", "PolicyTraining", "train_cartpole_policy"]


@dataclass(frozen=True, eq=False)
class LinearPolicy:
    """An epsilon-noisy greedy linear policy over a Discrete(A) action space.

    Args:
        weights: (A, o) W.
        bias: (A,) b.
        epsilon: probability of a uniformly random action, in [0, 1].
        seed: seed of the generator that ``__call__`` samples actions with
            (see `reseeded`).

    ``policy(obs)`` samples an action (an int for obs (o,), (n,) ints for
    (n, o)); ``policy.action_probs(obs)`` gives (A,) or (n, A) probabilities.
    """

    weights: np.ndarray
    bias: np.ndarray
    epsilon: float = 0.0
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        w = np.array(self.weights, dtype=np.float64)
        b = np.array(self.bias, dtype=np.float64).reshape(-1)
        if w.ndim != 2 or w.shape[0] < 2:
            raise ValueError(f"LinearPolicy: weights must have shape (A >= 2, o), got {w.shape}")
        if b.shape != (w.shape[0],):
            raise ValueError(f"LinearPolicy: bias must have shape ({w.shape[0]},), got {b.shape}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"LinearPolicy: epsilon must lie in [0, 1], got {self.epsilon!r}")
        w.setflags(write=False)
        b.setflags(write=False)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))

    @property
    def num_actions(self) -> int:
        return self.weights.shape[0]

    def _obs(self, obs):
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape[-1] != self.weights.shape[1] or obs.ndim not in (1, 2):
            raise ValueError(
                f"LinearPolicy: obs must have shape ({self.weights.shape[1]},) or "
                f"(n, {self.weights.shape[1]}), got {obs.shape}"
            )
        return obs

    def greedy(self, obs) -> np.ndarray:
        """argmax_a (W s + b)_a: () for obs (o,), (n,) for (n, o)."""
        obs = self._obs(obs)
        return np.argmax(obs @ self.weights.T + self.bias, axis=-1)

    def action_probs(self, obs) -> np.ndarray:
        """pi(. | s): (A,) for obs (o,), (n, A) for (n, o)."""
        greedy = self.greedy(obs)
        probs = np.full(np.shape(greedy) + (self.num_actions,), self.epsilon / self.num_actions)
        np.put_along_axis(
            probs,
            np.asarray(greedy)[..., None],
            1 - self.epsilon + self.epsilon / self.num_actions,
            axis=-1,
        )
        return probs

    def __call__(self, obs):
        """Sample actions: an int for obs (o,), (n,) ints for (n, o)."""
        probs = self.action_probs(obs)
        action = sample_actions(probs.reshape(-1, self.num_actions), self._rng)
        return int(action[0]) if probs.ndim == 1 else action

    def reseeded(self, seed: int) -> LinearPolicy:
        """The same policy with a fresh action-sampling generator."""
        return LinearPolicy(self.weights, self.bias, self.epsilon, seed)


@dataclass(frozen=True)
class PolicyTraining:
    """The result of `train_cartpole_policy`.

    Attributes:
        policy: the returned `LinearPolicy`.
        iteration: the CEM iteration it comes from (0 = the initial mean).
        scores: (I,) mean return of the search mean after each iteration
            (``score_episodes`` episodes each).
        returns: (eval_episodes,) returns of `policy` with the 500-step limit,
            on episodes independent of training.
        returns_unlimited: (eval_episodes,) the same without a time limit (up to
            ``failure_horizon`` steps): the time to failure.
        wall_time: seconds.
        method: a one-line description.
    """

    policy: LinearPolicy
    iteration: int
    scores: np.ndarray
    returns: np.ndarray
    returns_unlimited: np.ndarray
    wall_time: float
    method: str


def _population_returns(thetas, epsilon, episodes, rng, time_limit, physics):
    """Mean time-limited return of each candidate (P, A, o + 1) over the same start states."""
    p = thetas.shape[0]
    states = rng.uniform(-RESET_BOUND, RESET_BOUND, size=(episodes, 4))
    owner = np.repeat(np.arange(p), episodes)
    num_actions = thetas.shape[1]

    def choose(obs, index):
        th = thetas[owner[index]]
        logits = np.einsum("kao,ko->ka", th[:, :, :-1], obs.astype(np.float64)) + th[:, :, -1]
        greedy = np.argmax(logits, axis=1)
        explore = rng.random(index.size) < epsilon
        return np.where(explore, rng.integers(num_actions, size=index.size), greedy)

    returns, _, _ = simulate_cartpole(
        np.tile(states, (p, 1)), choose, horizon=time_limit, physics=physics
    )
    return returns.reshape(p, episodes).mean(axis=1)


def _as_policy(theta, epsilon, seed):
    return LinearPolicy(theta[:, :-1], theta[:, -1], epsilon, seed)


def train_cartpole_policy(
    seed: int = 0,
    epsilon: float = 0.2,
    target_return: float = 150.0,
    population: int = 64,
    elite_fraction: float = 0.2,
    episodes: int = 8,
    max_iterations: int = 30,
    score_episodes: int = 64,
    eval_episodes: int = 1000,
    time_limit: int = 500,
    failure_horizon: int = 20_000,
    init_std: float = 1.0,
    extra_std: float = 0.05,
) -> PolicyTraining:
    """Train a `LinearPolicy` on CartPole by the cross-entropy method; stop at a moderate return.

    Args:
        seed: seeds every draw (search distribution, start states, action noise).
        epsilon: fixed action noise of the policy, also during training.
        target_return: the moderate mean return (with the 500-step limit) to stop at.
        population: candidates per iteration.
        elite_fraction: fraction of candidates the Gaussian is refitted to.
        episodes: episodes per candidate.
        max_iterations: at most this many CEM iterations.
        score_episodes: episodes to score the search mean after each iteration.
        eval_episodes: episodes of the final report (`PolicyTraining.returns`).
        time_limit: CartPole-v1's 500 steps.
        failure_horizon: cap of the time-to-failure episodes.
        init_std: initial std of the search distribution.
        extra_std: std added at each refit (keeps the search from collapsing).
    """
    if not 0 < elite_fraction <= 1:
        raise ValueError(f"elite_fraction must lie in (0, 1], got {elite_fraction!r}")
    if target_return <= 0:
        raise ValueError(f"target_return must be > 0, got {target_return!r}")
    start = time.perf_counter()
    physics = CartPolePhysics.from_env()
    rng = np.random.default_rng(seed)
    shape = (2, 5)  # CartPole: A = 2 actions, o + 1 = 4 observation weights + a bias
    mean, std = np.zeros(shape), np.full(shape, init_std)
    n_elite = max(2, int(round(elite_fraction * population)))
    scores, candidates = [], []

    def score(theta):
        policy = _as_policy(theta, epsilon, int(rng.integers(2**31)))
        return float(
            np.mean(
                episode_returns(
                    policy, score_episodes, int(rng.integers(2**31)), time_limit, physics
                )
            )
        )

    for _ in range(max_iterations):
        thetas = mean + std * rng.standard_normal((population,) + shape)
        fitness = _population_returns(thetas, epsilon, episodes, rng, time_limit, physics)
        elite = thetas[np.argsort(fitness)[-n_elite:]]
        mean, std = elite.mean(axis=0), elite.std(axis=0) + extra_std
        candidates.append(mean.copy())
        scores.append(score(mean))
        if scores[-1] >= target_return:
            break
    scores = np.asarray(scores)
    best = int(np.argmin(np.abs(scores - target_return)))
    policy = _as_policy(candidates[best], epsilon, seed)
    eval_seed = seed + 1_000_003
    returns = episode_returns(policy, eval_episodes, eval_seed, time_limit, physics)
    unlimited = episode_returns(policy, eval_episodes, eval_seed, failure_horizon, physics)
    method = (
        f"cross-entropy method on a linear policy (population {population}, "
        f"elite {n_elite}, {episodes} episodes each), epsilon = {epsilon} action noise, "
        f"iterate closest to a mean return of {target_return:g} (iteration {best + 1} "
        f"of {len(scores)}), seed {seed}"
    )
    return PolicyTraining(
        policy=policy,
        iteration=best + 1,
        scores=scores,
        returns=returns,
        returns_unlimited=unlimited,
        wall_time=time.perf_counter() - start,
        method=method,
    )
