"""The tutorial (docs/tutorial.py, a jupytext script the docs site executes) runs as written,
and its printed numbers hold against the independent routes it prints them with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.py"


def test_tutorial_runs_and_its_values_track_the_monte_carlo_truth(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    run = subprocess.run([sys.executable, str(TUTORIAL)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("400 transitions in")
    assert lines[1].startswith("td estimator; dense solver;")
    rmse_line = next(line for line in lines if line.startswith("RMSE of the TD-NTK values"))
    rmse = float(rmse_line.split(":")[1].split()[0])
    low, high = (float(v) for v in rmse_line.split("range over ")[1].rstrip(")").split(" .. "))
    # the fixed point of 400 random-policy transitions is close to the truth: its error is
    # a small part of the values' spread (a wrong estimator or sign would not be)
    assert 0 < rmse < 0.25 * (high - low)
