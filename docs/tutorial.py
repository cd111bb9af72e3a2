# %% [markdown]
# # Tutorial: a policy's value from offline data, with its uncertainty
#
# This tutorial goes from a dataset to values, their uncertainty and figures,
# with the Python API (the command line `tdntk collect` / `tdntk evaluate`
# does the same; see [Bring your own data](datasets.md)). It runs in a few
# seconds on a CPU, and the test suite runs it.
#
# We evaluate a random policy on CartPole from 400 logged transitions, and
# compare with the truth computed by rolling the policy out.

# %%
import matplotlib.pyplot as plt
import numpy as np

import tdntk
from tdntk.datasets import Features, collect, to_transitions
from tdntk.envs.cartpole import monte_carlo_returns
from tdntk.experiments.evaluate import EvaluateConfig, evaluate

# %% [markdown]
# ## 1. Data
#
# `collect` rolls a policy out in any Gymnasium environment (here uniformly
# random, with its action probabilities recorded) and keeps Gymnasium's
# `terminated` and `truncated` flags apart: a terminal transition does not
# bootstrap, a truncated one does.

# %%
data = collect("CartPole-v1", policy=None, n_transitions=400, seed=0)
print(data.n, "transitions in", data.num_episodes, "episodes;",
      int(data.terminated.sum()), "terminated")  # fmt: skip

# %% [markdown]
# ## 2. Values of the behaviour policy
#
# `evaluate` encodes (state, action) inputs, builds the transitions for the
# behaviour policy (expected SARSA: both actions at the next state, weighted
# by the recorded probabilities) and computes the infinitely wide ensemble of
# Q-networks trained by **TD with a target network** at t = infinity: the
# fixed point of policy evaluation. The values of the states are means and
# standard deviations over that ensemble.

# %%
gamma = 0.95
result = evaluate(data, EvaluateConfig(gamma=gamma))
print(result.summary["estimator"]["name"], "estimator;",
      result.summary["solver"]["name"], "solver;",
      len(result.states), "states")  # fmt: skip

# %% [markdown]
# ## 3. The truth, by rolling the policy out
#
# CartPole's physics are vectorised in `tdntk.envs.cartpole`: the expected
# discounted return of the random policy from each evaluated state.

# %%
class Uniform:
    """The random behaviour policy, as a batch of action probabilities."""

    def action_probs(self, obs):
        return np.full((len(obs), 2), 0.5)


truth = monte_carlo_returns(Uniform(), result.states, gamma=gamma, rollouts=64, seed=1)
error = result.value_mean - truth.mean
print(f"RMSE of the TD-NTK values: {np.sqrt(np.mean(error**2)):.2f} "
      f"(the values range over {truth.mean.min():.1f} .. {truth.mean.max():.1f})")  # fmt: skip

# %%
fig, ax = plt.subplots(figsize=(7, 4))
order = np.argsort(result.states[:, 2])
ax.errorbar(result.states[order, 2], result.value_mean[order], yerr=2 * result.value_std[order],
            fmt="o", ms=3, alpha=0.6, label="TD-NTK ensemble: mean +- 2 std")  # fmt: skip
ax.plot(result.states[order, 2], truth.mean[order], "k.", ms=3, label="Monte Carlo truth")
ax.set_xlabel("pole angle")
ax.set_ylabel("V(s)")
ax.legend()
plt.show()

# %% [markdown]
# ## 4. The closed form itself: values over training
#
# The same model, at the level of the core: `Transitions`, an `MLP`'s kernels,
# a `Schedule` (learning rate, estimator, time, loss) and `TDNTK.predict` at any
# training times at once (time is the leading axis of the result).

# %%
features = Features.from_spaces(data.observation_space, data.action_space, standardize=data)
probs = data.next_action_probs
transitions = to_transitions(data, features, gamma)
net = tdntk.MLP(depth=2)
rate = tdntk.critical_learning_rate(net, transitions, target=tdntk.SoftTarget(1.0))
schedule = tdntk.Schedule(0.5 * rate, target=tdntk.SoftTarget(1.0))
model = tdntk.TDNTK(net, transitions, schedule)
times = np.array([0.0, 1e2, 1e3, 1e4, 1e5, np.inf])
x = features.encode(result.states[:50], np.zeros(50, int))  # action 0 at 50 states
pred = model.predict(x, times, full_cov=False)
print("critical learning rate (eq. 11):", f"{rate:.3g}")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
steps = np.where(np.isinf(times), 2e6, np.maximum(times, 1))
ax.plot(steps, pred.mean.mean(axis=1), "o-", label="mean Q over 50 states")
ax.fill_between(steps, pred.mean.mean(axis=1) - pred.std.mean(axis=1),
                pred.mean.mean(axis=1) + pred.std.mean(axis=1), alpha=0.3,
                label="+- mean std")  # fmt: skip
ax.set_xscale("log")
ax.set_xlabel("training steps t (rightmost: t = infinity)")
ax.set_ylabel("Q(s, 0)")
ax.legend()
plt.show()

# %% [markdown]
# At t = 0 the ensemble is the prior (mean 0, the NNGP's spread); training
# moves the mean to the TD fixed point and shrinks the spread. The spread at
# t = infinity measures how the initialisations disagree, not how far the
# finite dataset is from the truth: [Policy value](policy-value.md) combines
# both into intervals that cover the truth.
