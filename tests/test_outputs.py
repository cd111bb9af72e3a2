"""Output folders never lose a user's file, and Ctrl-C leaves a run that resumes (issue 15).

`tdntk evaluate` and `tdntk collect` through the command line (small data, seconds), and
`tdntk.files.OutputFolder` directly: inputs inside --out, foreign files, --out ., an
unwritable folder, another command's result, a file that appears while a run works, two
runs on one folder, and Ctrl-C during an --ensemble training (the printed command resumes
it to the uninterrupted values).
"""

from __future__ import annotations

import json
import os
import shlex
import signal

import numpy as np
import pytest
from click.testing import CliRunner

from tdntk import training
from tdntk.cli import main
from tdntk.files import OutputError, open_output, staged_output_dir, write_text

MANIFEST = "tdntk-manifest.json"


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _dataset(path):
    """A 6-transition .npz dataset (2-dim observations, 2 actions)."""
    rng = np.random.default_rng(0)
    np.savez(
        path, observations=rng.normal(size=(6, 2)), actions=rng.integers(0, 2, 6),
        rewards=rng.normal(size=6), next_observations=rng.normal(size=(6, 2)),
        terminated=np.zeros(6, bool), truncated=np.zeros(6, bool),
        next_actions=rng.integers(0, 2, 6),
    )  # fmt: skip
    return path


def _tree(folder):
    """{relative path: bytes} of every file under `folder`, hidden ones included."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _one_line_error(r, *phrases):
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


EVAL = ["--t", "inf", "--no-progress"]


# ---------------------------------------------------------------------- refusals
def test_input_dataset_inside_out_is_refused_and_kept(tmp_path):
    # the report: `evaluate --data sub/data.npz --out sub` deleted the dataset
    sub = tmp_path / "sub"
    sub.mkdir()
    data = _dataset(sub / "data.npz")
    before = _tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        r = _run(["evaluate", "--data", data, "--out", sub, *EVAL, *extra])
        _one_line_error(r, f"--out {sub} is not empty", "data.npz", "choose another --out")
        assert _tree(tmp_path) == before  # nothing lost, nothing left behind


def test_foreign_file_in_out_is_refused_even_with_overwrite(tmp_path):
    data = _dataset(tmp_path / "d.npz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    for extra in ([], ["--overwrite"]):
        r = _run(["evaluate", "--data", data, "--out", out, *EVAL, *extra])
        _one_line_error(r, "holds no tdntk result", "notes.txt", "never deletes files")
        assert _tree(out) == {"notes.txt": b"my notes"}


def test_out_dot_in_the_current_folder(tmp_path, monkeypatch):
    data = _dataset(tmp_path / "d.npz")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # the report: `--out .` failed with "PosixPath('.') has an empty name" and left a
    # hidden .partial folder; an empty current folder now takes the results
    r = _run(["evaluate", "--data", data, "--out", ".", *EVAL])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in work.iterdir())
    assert names == ["summary.json", MANIFEST, "values.csv", "values.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    first = _tree(work)
    # other settings on a folder holding a result are refused, naming the difference
    r = _run(["evaluate", "--data", data, "--out", ".", "--gamma", "0.5", *EVAL])
    _one_line_error(r, "other settings", "gamma: 0.99 -> 0.5", "--overwrite")
    assert _tree(work) == first
    # --overwrite replaces tdntk's files only: a file the user added since stays
    (work / "notes.txt").write_text("mine")
    r = _run(["evaluate", "--data", data, "--out", ".", "--gamma", "0.5", "--overwrite", *EVAL])
    assert r.exit_code == 0, r.output
    assert (work / "notes.txt").read_text() == "mine"
    assert (work / "values.csv").read_bytes() != first["values.csv"]
    manifest = json.loads((work / MANIFEST).read_text())
    assert manifest["files"] == ["summary.json", "values.csv", "values.png"]
    assert manifest["settings"]["settings"]["gamma"] == 0.5
    # a current folder that holds the input (and nothing of tdntk's) is refused, untouched
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    _dataset(other / "d.npz")
    before = _tree(other)
    r = _run(["evaluate", "--data", "d.npz", "--out", ".", *EVAL])
    _one_line_error(r, "--out . is not empty", "d.npz")
    assert _tree(other) == before


def test_unwritable_folder_is_refused_cleanly(tmp_path):
    data = _dataset(tmp_path / "d.npz")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        probe = locked / "probe"
        try:
            probe.mkdir()
        except PermissionError:
            writable = False
        else:
            probe.rmdir()
            writable = True
        if writable:
            pytest.skip("running as root: chmod 555 does not stop root from writing")
        for out in (locked, locked / "new"):
            r = _run(["evaluate", "--data", data, "--out", out, *EVAL])
            _one_line_error(r, f"--out {out}", "cannot", "Permission denied")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_uncreatable_out_and_a_file_as_out_are_refused_cleanly(tmp_path):
    # refused for root too: a folder cannot be created below a file
    data = _dataset(tmp_path / "d.npz")
    (tmp_path / "file.txt").write_text("x")
    before = _tree(tmp_path)
    r = _run(["evaluate", "--data", data, "--out", tmp_path / "file.txt" / "out", *EVAL])
    _one_line_error(r, "cannot create the folder", "choose another path")
    r = _run(["evaluate", "--data", data, "--out", tmp_path / "file.txt", *EVAL])
    _one_line_error(r, "is a file, not a folder")
    r = _run(["evaluate", "--data", data, "--out", "", *EVAL])
    _one_line_error(r, "--out is empty")
    assert _tree(tmp_path) == before


def test_collect_replaces_only_a_tdntk_dataset(tmp_path):
    out = tmp_path / "d.npz"
    args = ["collect", "--env", "CartPole-v1", "--transitions", 8, "--out", out, "--no-progress"]
    out.write_text("not a dataset")
    for extra in ([], ["--overwrite"]):
        r = _run(args + extra)
        _one_line_error(r, f"--out {out}")
        assert out.read_text() == "not a dataset"
    out.unlink()
    assert _run(args).exit_code == 0
    first = out.read_bytes()
    _one_line_error(_run(args + ["--seed", 1]), "exists", "--overwrite")
    assert out.read_bytes() == first
    assert _run(args + ["--seed", 1, "--overwrite"]).exit_code == 0
    assert out.read_bytes() != first and sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


# ---------------------------------------------------------------------- the folder itself
def test_other_command_and_concurrent_run_are_refused(tmp_path):
    with open_output(tmp_path / "o", "toy", {"steps": 4}) as folder:
        with pytest.raises(OutputError, match="in use by another tdntk run"):
            open_output(tmp_path / "o", "toy", {"steps": 4}).__enter__()
        with folder.staging() as tmp:
            write_text(tmp / "report.md", "toy")
        folder.complete()
    with pytest.raises(OutputError, match="already holds a result of `tdntk toy`"):
        with open_output(tmp_path / "o", "evaluate", {}):
            pass
    with pytest.raises(OutputError, match=r"other settings \(steps: 4 -> 8\)"):
        with open_output(tmp_path / "o", "toy", {"steps": 8}):
            pass
    assert (tmp_path / "o" / "report.md").read_text() == "toy"
    # a Python caller's staged writes replace a tdntk result only, and only its files
    (tmp_path / "o" / "mine.txt").write_text("mine")
    with staged_output_dir(tmp_path / "o") as tmp:
        write_text(tmp / "values.csv", "v")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "mine.txt", MANIFEST, "values.csv",
    ]  # fmt: skip


def test_a_file_that_appears_during_a_run_is_not_overwritten(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(OutputError, match="report.md exist"):
        with open_output(out, "toy", {}) as folder:
            write_text(folder.stages / "ensemble.npz", "finished stage")  # work to keep
            (out / "report.md").write_text("the user's")
            with folder.staging() as tmp:
                write_text(tmp / "report.md", "tdntk's")
    assert (out / "report.md").read_text() == "the user's"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "stopped" and manifest["files"] == []
    assert (folder.stages / "ensemble.npz").exists()  # a rerun resumes from the saved stage
    with open_output(out, "toy", {}) as again:
        assert again.resumed


def test_a_failure_before_any_saved_work_leaves_nothing(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with open_output(out, "toy", {}):
            raise RuntimeError("bad input")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_ensemble_training_prints_the_command_that_resumes(
    tmp_path, monkeypatch, python_sigint
):
    data = _dataset(tmp_path / "d.npz")
    args = ["evaluate", "--data", data, "--t", 40, "--ensemble", 2, "--width", 16,
            "--learning-rate", 0.05, "--no-progress", "--checkpoint-every-s", "inf"]  # fmt: skip
    r = _run(args + ["--out", tmp_path / "fresh"])
    assert r.exit_code == 0, r.output
    real_compiled = training._compiled
    calls = []

    def compiled(spec, devices):
        fn = real_compiled(spec, devices)

        def chunk(*a):
            calls.append(1)
            if len(calls) == 3:
                signal.raise_signal(signal.SIGINT)
            return fn(*a)

        return chunk

    monkeypatch.setattr(training, "_compiled", compiled)
    monkeypatch.setattr(training, "_SECONDS_PER_CALL", 1e-9)
    out = tmp_path / "out"
    r = _run(args + ["--out", out, "--overwrite"])
    assert r.exit_code == 130, r.output
    assert f"saved in {out}" in r.output
    command = r.output.strip().splitlines()[-1].strip()
    words = shlex.split(command)
    assert words[:2] == ["tdntk", "evaluate"] and "--overwrite" not in words
    options, rest = {}, words[2:]
    while rest:  # --flag value, or a --flag alone
        value = rest[1] if len(rest) > 1 and not rest[1].startswith("--") else None
        options[rest[0]], rest = value, rest[1 + (value is not None) :]
    assert options == {
        "--data": str(data), "--out": str(out), "--checkpoint-every-s": "inf",
        "--no-progress": None, "--t": "40.0", "--width": "16", "--ensemble": "2",
        "--learning-rate": "0.05",
    }  # fmt: skip
    (ckpt,) = (out / "checkpoints" / "train").glob("ensemble-*/checkpoint.npz")
    with np.load(ckpt) as f:
        assert int(f["step"]) == 2  # the record at 0, then a step per call
    monkeypatch.undo()
    r = _run(shlex.split(command)[1:])
    assert r.exit_code == 0, r.output
    fresh = (tmp_path / "fresh" / "values.csv").read_text()
    assert (out / "values.csv").read_text() == fresh  # resumed = uninterrupted, to the digit
    ensemble = np.loadtxt(out / "values.csv", delimiter=",", skiprows=1)[:, -2:]
    assert np.all(np.isfinite(ensemble)) and np.all(ensemble[:, 1] > 0)
    assert not (out / "checkpoints").exists() and os.listdir(out) != []
