"""Run by `make core-check` in a virtual environment holding `pip install .` only.

The closed-form core must import and predict without the extras: no Gymnasium,
matplotlib, click or Minari. Exits non-zero (with the reason) otherwise.
"""

import importlib.util
import sys

import numpy as np

import tdntk

extras = [m for m in ("gymnasium", "matplotlib", "click", "minari")
          if importlib.util.find_spec(m) is not None]  # fmt: skip
if extras:
    sys.exit(f"core-check: the core environment holds extras it should not: {extras}")
s = np.linspace(0.0, 1.25, 21)[:, None]
data = tdntk.Transitions.from_gamma(s, (s[:, 0] >= 1.0) * 1.0, s + 0.25, 1.0, s[:, 0] >= 1.0)
model = tdntk.TDNTK(tdntk.MLP(depth=2), data, tdntk.Schedule(0.01, tdntk.SoftTarget(1.0)))
pred = model.predict(s, [64.0, np.inf])
# the TD fixed point on this chain: every state reaches the rewarding step once (gamma = 1)
expected = np.ones(s.shape[0])
if not np.allclose(pred.mean[1], expected, atol=1e-6):
    sys.exit(f"core-check: wrong values {pred.mean[1]} (expected {expected})")
ens = tdntk.train_ensemble(
    tdntk.MLP(depth=2, width=64),
    data,
    tdntk.Schedule(0.01, tdntk.SoftTarget(1.0)),
    steps=5,
    members=2,
    x_eval=s,
    progress=False,
)
if not np.all(np.isfinite(np.asarray(ens.q))):
    sys.exit("core-check: finite-network training returned non-finite values")
print(f"core-check: tdntk {tdntk.__version__} predicts and trains without the extras")
