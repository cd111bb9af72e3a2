"""Importing tdntk changes no global state of the user's process."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import logging, warnings, jax
before = (jax.config.jax_enable_x64, list(warnings.filters), logging.root.level,
          len(logging.root.handlers))
import tdntk, tdntk.predict, tdntk.dynamics, tdntk.nets, tdntk.data, tdntk.policy_value
after = (jax.config.jax_enable_x64, list(warnings.filters), logging.root.level,
         len(logging.root.handlers))
assert before == after, (before, after)
assert jax.numpy.zeros(1).dtype == jax.numpy.float32
print("clean")
"""


def test_import_leaves_global_state_alone():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"
