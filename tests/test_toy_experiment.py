"""The toy experiment end to end at the tiny preset, through the `tdntk toy` command."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

import tdntk
from tdntk.cli import main
from tdntk.experiments import toy
from tdntk.experiments.toy import PRESETS, ToyConfig

FIGURE_COLUMNS = {
    "fig1_linearisation": ["step", "param_distance", "param_rmse", "function_rmse"],
    "fig2_training": ["step", "s", "true_value", "analytic_mean", "analytic_std"]
    + ["nn_mean", "nn_std"],
    "fig3_out_of_range": ["step", "s", "true_value", "analytic_mean", "analytic_std"]
    + ["nn_mean", "nn_std"],
    "fig4_end_of_training": ["s", "true_value", "lin_mean", "lin_std", "lin_mc_mean"]
    + ["lin_mc_std", "nn_mean", "nn_std"],
    "fig6_individual_networks": ["step", "member", "s", "q"],
    "fig7_target_networks": ["tau", "s", "true_value", "analytic_mean", "analytic_std"]
    + ["nn_mean", "nn_std"],
    "fig_widths": ["width", "s", "true_value", "analytic_mean", "analytic_std", "nn_mean"]
    + ["nn_std", "mc_mean", "mc_std"],
}
TABLE_COLUMNS = {
    "methods": ["method", "rmse_in_range", "rmse_out_of_range", "std_at_data_states"]
    + ["std_between_states", "std_ratio_data_over_between"],
    "ensemble_vs_analytic": ["step", "mean_rmse_in", "std_rmse_in"],
    "targets_summary": ["tau", "analytic_rmse_vs_true", "nn_rmse_vs_true", "nn_vs_analytic"],
    "widths_summary": ["width", "nn_mean_rmse", "nn_std_rmse", "mc_mean_rmse", "mc_std_rmse"],
    "std_at_data_states": ["s", "is_data_state"],
}


def _read_csv(path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    cols = {}
    for j, name in enumerate(header):
        values = [r[j] for r in body]
        try:
            cols[name] = np.array(values, dtype=np.float64)
        except ValueError:
            cols[name] = np.array(values)
    return cols


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    result = CliRunner().invoke(main, ["toy", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


def test_command_prints_where_the_report_is(tiny_run):
    out, output = tiny_run
    assert f"report: {out / 'report.md'}" in output
    assert "projected network training time" in output


def test_every_figure_has_png_pdf_and_its_data_columns(tiny_run):
    out, _ = tiny_run
    for stem, columns in FIGURE_COLUMNS.items():
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-", stem
        cols = _read_csv(out / f"{stem}.csv")
        assert list(cols)[: len(columns)] == columns, stem
        assert len(cols[columns[0]]) > 0, stem
    for stem, columns in TABLE_COLUMNS.items():
        assert set(columns) <= set(_read_csv(out / f"{stem}.csv")), stem


def test_report_links_every_figure_and_marks_every_claim(tiny_run):
    out, _ = tiny_run
    text = (out / "report.md").read_text()
    for stem in FIGURE_COLUMNS:
        assert f"]({stem}.png)" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"] == json.loads(
        json.dumps(dataclasses.asdict(dataclasses.replace(PRESETS["tiny"], out=str(out))))
    )
    assert len(summary["claims"]) >= 12
    # the tiny preset is a smoke test: every verdict is marked not meaningful
    assert "**The verdicts below are not meaningful**: smoke-test settings" in text
    for claim in summary["claims"]:
        assert claim["verdict"] in ("reproduced", "partly", "not reproduced")
        assert claim["meaningful"] is False
        assert f"**not meaningful** (the rule gives: {claim['verdict']})" in text
    assert {"ensemble", "fig1", "lin_mc", "analytic", "total"} <= set(summary["wall_time_seconds"])
    assert summary["critical_learning_rate"] > summary["settings"]["learning_rate"]


def test_true_values_in_the_figures_follow_the_papers_value_function(tiny_run):
    # independent route: V(s) = 1 for s < 1, 0 otherwise (paper sec. 5.1), exact
    out, _ = tiny_run
    for stem in ("fig2_training", "fig3_out_of_range", "fig4_end_of_training"):
        cols = _read_csv(out / f"{stem}.csv")
        np.testing.assert_array_equal(cols["true_value"], np.where(cols["s"] < 1, 1.0, 0.0))
    cols = _read_csv(out / "fig3_out_of_range.csv")
    assert cols["s"].min() == -0.5 and cols["s"].max() == 2.5


def test_closed_form_starts_at_the_prior_and_converges_to_a_bellman_fixed_point(tiny_run):
    out, _ = tiny_run
    cols = _read_csv(out / "fig2_training.csv")
    at0 = cols["step"] == 0
    np.testing.assert_array_equal(cols["analytic_mean"][at0], 0.0)  # mean_0 = Z_0 r = 0, exact
    with np.load(out / "results.npz") as f:
        x, reward, discount = f["data_x"][:, 0], f["data_reward"], f["data_discount"]
        s_eval, v_inf = f["x_eval"][:, 0], f["analytic_inf_mean"]
    # at the data states, V_inf(s) = r + g V_inf(s + 0.25) (eq. 10 at t = inf); tolerance
    # 1e-6 covers the solve's round-off on an ill-conditioned Theta_bar
    value = {float(s): float(v) for s, v in zip(s_eval, v_inf, strict=True)}
    inner = x + 0.25 <= 1.25
    lhs = np.array([value[float(s)] for s in x[inner]])
    rhs = reward[inner] + discount[inner] * np.array([value[float(s + 0.25)] for s in x[inner]])
    np.testing.assert_allclose(lhs, rhs, atol=1e-6)


def test_ensemble_numbers_agree_across_files(tiny_run):
    out, _ = tiny_run
    with np.load(out / "results.npz") as f:
        q_nn, steps = f["q_nn"], f["steps"]
        fig1_steps, fig1_q = f["fig1_steps"], f["fig1_q_nn"]
    # fig. 1's network is member 0 retrained alone from the same seed: same numbers
    # (float32 training, tolerance 1e-5)
    for r, t in enumerate(steps):
        (k,) = np.flatnonzero(fig1_steps == t)
        np.testing.assert_allclose(fig1_q[k], q_nn[r, 0], atol=1e-5)
    # fig. 6's individual curves average to fig. 2's ensemble mean (CSV round trip, 1e-12)
    f6, f2 = _read_csv(out / "fig6_individual_networks.csv"), _read_csv(out / "fig2_training.csv")
    for t in np.unique(f2["step"]):
        sel = f6["step"] == t
        members = int(f6["member"][sel].max()) + 1
        mean6 = f6["q"][sel].reshape(members, -1).mean(axis=0)
        np.testing.assert_allclose(mean6, f2["nn_mean"][f2["step"] == t], atol=1e-12)
    # fig. 1 starts where the network starts: no displacement at step 0 (exact) and the
    # linearisation's outputs equal the network's (float32 vs float64 forward, 1e-5)
    f1 = _read_csv(out / "fig1_linearisation.csv")
    assert f1["step"][0] == 0 and f1["param_distance"][0] == 0 and f1["param_rmse"][0] == 0
    assert f1["function_rmse"][0] < 1e-5


def test_stopped_run_resumes_to_the_same_files_and_skips_finished_stages(
    tiny_run, tmp_path, monkeypatch, capsys
):
    """A run killed in the width sweep (after the width-8 training's last checkpoint, before its
    Lin. (MC)) keeps every finished stage and that checkpoint; rerun, it computes only the
    width-8 stage (its training resumed from the checkpoint) and writes the uninterrupted
    run's data files: CSVs byte for byte, results.npz array for array."""
    ref, _ = tiny_run
    out = tmp_path / "run"
    cfg = dataclasses.replace(PRESETS["tiny"], out=str(out))
    real, calls = toy.lin_mc, []

    def lin_mc_then_kill(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first is the Lin. (MC) stage; the second is inside width_8
            raise RuntimeError("killed (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(toy, "lin_mc", lin_mc_then_kill)
    with pytest.raises(RuntimeError, match="simulated"):
        toy.run(cfg)
    monkeypatch.undo()
    manifest = json.loads((out / "tdntk-manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["files"] == []
    done = sorted(p.stem for p in (out / "checkpoints" / "stages").glob("*.npz"))
    assert done == sorted(["projection", "analytic", "ensemble", "fig1", "lin_mc",
                           "target_tau_0.1", "target_tau_1"])  # fmt: skip
    assert len(list((out / "checkpoints" / "train").glob("width_8-*/checkpoint.npz"))) == 1

    capsys.readouterr()
    toy.run(cfg)
    log = capsys.readouterr().out
    assert all(f"stage {name}: done earlier" in log for name in done), log
    assert "stage width_8: width sweep: width 8" in log and "stage width_8: done in" in log
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert {s["name"]: s["run"] for s in stages} == {**dict.fromkeys(done, "earlier"),
                                                     "width_8": "this"}  # fmt: skip
    assert not (out / "checkpoints" / "train").exists()  # removed once complete

    csvs = sorted(p.name for p in ref.glob("*.csv"))
    assert len(csvs) == 12 and csvs == sorted(p.name for p in out.glob("*.csv"))
    for name in csvs:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    with np.load(ref / "results.npz") as a, np.load(out / "results.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    got, want = (json.loads((d / "summary.json").read_text()) for d in (out, ref))
    for s in (got, want):
        s.pop("wall_time_seconds"), s["settings"].pop("out")
    assert got == want


def test_cli_help_lists_the_config_fields():
    result = CliRunner().invoke(main, ["toy", "--help"])
    assert result.exit_code == 0
    leaves = [f for f in dataclasses.fields(ToyConfig) if f.name != "net"]
    for field in leaves + list(dataclasses.fields(tdntk.MLP)):
        assert "--" + field.name.replace("_", "-") in result.output
    assert "[relu|erf|identity]" in result.output and "--net" not in result.output
    assert "--preset [paper|quick|tiny]" in result.output


def test_cli_rejects_a_bad_flag_and_a_bad_preset():
    result = CliRunner().invoke(main, ["toy", "--no-such-flag"])
    assert result.exit_code == 2 and "No such option" in result.output
    result = CliRunner().invoke(main, ["toy", "--preset", "huge"])
    assert result.exit_code == 2 and "huge" in result.output


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="width_steps must be <= steps"):
        ToyConfig(steps=64, width_steps=128)
    with pytest.raises(ValueError, match="taus"):
        ToyConfig(taus=(2.0,))
    with pytest.raises(ValueError, match="ToyConfig.members"):
        ToyConfig(members=1)
    with pytest.raises(ValueError, match="ood_low"):
        ToyConfig(ood_low=0.5)


def test_report_redrawn_from_saved_results_is_identical(tiny_run, tmp_path):
    # independent route: summary.json + results.npz -> ToyResults -> report (no retraining)
    from tdntk.experiments.toy import load_results
    from tdntk.report.toy import write_report

    out, _ = tiny_run
    write_report(load_results(out), tmp_path)
    assert (tmp_path / "report.md").read_text() == (out / "report.md").read_text()
    for name in ("summary.json", "methods.csv", "fig2_training.csv", "fig_widths.csv"):
        assert (tmp_path / name).read_text() == (out / name).read_text(), name


# ---------------------------------------------------------------------- claims, recomputed
def _assert_printed(token: str, value: float, sig: int | None = 3) -> None:
    """`token` is `value` printed with '.{sig}g' (sig None: fixed decimals, read off the token):
    within half a unit of its last significant digit (g drops trailing zeros, so the unit
    comes from the magnitude and sig, not from the digits shown)."""
    x = float(token)
    if sig is None:
        mantissa = token.lower().split("e")[0]
        unit = 10.0 ** -len(mantissa.split(".")[1]) if "." in mantissa else 1.0
    else:
        unit = 10.0 ** (np.floor(np.log10(abs(x))) - sig + 1) if x != 0 else 0.0
    assert abs(value - x) <= 0.5 * unit * (1 + 1e-9), (token, value)


def _assert_printed_list(text: str, values) -> None:
    tokens = [t.strip() for t in text.split(",")]
    assert len(tokens) == len(values), (text, values)
    for token, value in zip(tokens, values, strict=True):
        _assert_printed(token, value)


class _Fixed(float):
    """A number printed with fixed decimals (e.g. '.2f'), not '.3g'."""


def _band(ok: bool, partly: bool) -> str:
    return "reproduced" if ok else ("partly" if partly else "not reproduced")


def _rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def test_claim_numbers_and_verdicts_recomputed_from_saved_files(tiny_run):
    """Every claim's deciding numbers and verdict, recomputed here from results.npz, the
    settings in summary.json and fig2_training.csv (which times fig. 2 shows), without
    `tdntk.report`, against summary.json's claims and report.md's claims table.

    Ensemble stds are maximum-likelihood (ddof=0: the Gaussian fitted to the members).
    Tolerance: half a unit in the last printed digit ('.3g', or '.2f' for the fig. 3
    fraction); the rules (thresholds) are the ones each claim states.
    """
    out, _ = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    cfg = summary["settings"]
    n_eval, n_states = cfg["n_eval"], cfg["n_states"]
    with np.load(out / "results.npz") as f:
        a = {k: f[k] for k in f.files}
    s_all = a["x_eval"][:, 0]
    part = {
        "in": slice(0, n_eval),
        "out": slice(n_eval, 2 * n_eval),
        "probe": slice(2 * n_eval, None),
    }
    s_in, s_out = s_all[part["in"]], s_all[part["out"]]
    is_data = np.arange(s_all[part["probe"]].size) < n_states
    np.testing.assert_array_equal(s_all[part["probe"]][is_data], a["data_x"][:, 0])
    assert s_in.min() == 0.0 and s_in.max() == 1.25
    true_in = a["true_value"][part["in"]]
    steps, q_nn = a["steps"], a["q_nn"]
    nn_mean, nn_std = q_nn.mean(axis=1), q_nn.std(axis=1)  # (R, m)

    expected = {}  # claim text -> (verdict, check of its deciding numbers)

    # fig. 1: member 0 vs its linearisation; the function RMSE recomputed from the outputs
    dist = float(a["fig1_param_distance"][-1])
    expected["The parameters travel little"] = (
        _band(dist < 0.05, dist < 0.2),
        (r"= (\S+)$", [dist]),
    )
    pr = a["fig1_param_rmse"]
    frac = float(pr[-1] / pr.max())
    expected["The parameter-space error"] = (
        _band(frac >= 0.9, frac >= 0.5),
        (r"= (\S+) \(final (\S+)\)$", [frac, pr[-1]]),
    )
    fr = np.sqrt(np.mean((a["fig1_q_nn"][:, part["in"]] - a["fig1_q_lin"][:, part["in"]]) ** 2, 1))
    np.testing.assert_allclose(fr, a["fig1_function_rmse"], rtol=1e-10, atol=1e-15)
    ratio = float(fr[-1] / fr.max())
    expected["The function-space error"] = (
        _band(ratio < 0.5, ratio < 0.9),
        (
            r"= (\S+) \(max (\S+) at step (\d+), final ([^)]+)\)$",
            [ratio, fr.max(), a["fig1_steps"][np.argmax(fr)], fr[-1]],
        ),
    )
    # figs 2-3: the times fig. 2 shows
    f2_steps = np.unique(_read_csv(out / "fig2_training.csv")["step"])
    rows = [int(np.flatnonzero(steps == t)[0]) for t in f2_steps]
    worst = max(_rmse(nn_mean[r, part["in"]], a["analytic_mean"][r, part["in"]]) for r in rows)
    expected["The analytic solution (eq. 10) approximately"] = (
        _band(worst < 0.1, worst < 0.25),
        (r"= (\S+)$", [worst]),
    )
    later = [r for r in rows if steps[r] > 0]
    std_diff = max(_rmse(nn_std[r, part["in"]], a["analytic_std"][r, part["in"]]) for r in later)
    std_ratio = [
        nn_std[r, part["in"]].mean() / a["analytic_std"][r, part["in"]].mean() for r in later
    ]
    expected["In the data range the NN ensemble's uncertainty"] = (
        _band(std_diff < 0.05, std_diff < 0.15),
        (r"= (\S+); mean NN std / mean eq. 10 std: (\S+) to (\S+)$",
         [std_diff, min(std_ratio), max(std_ratio)]),
    )  # fmt: skip
    outside = (s_out < 0) | (s_out > 1.25)
    nn_out, an_out = nn_std[-1, part["out"]][outside], a["analytic_std"][-1, part["out"]][outside]
    smaller = float(np.mean(nn_out < 0.8 * an_out))
    expected["Out of the data range"] = (
        _band(smaller >= 0.1, smaller > 0),
        (
            r"at t = (\d+): (\S+) \(min ratio ([^)]+)\)$",
            [steps[-1], _Fixed(smaller), np.min(nn_out / an_out)],
        ),
    )
    # fig. 4: stds at the dataset states and at the midpoints between them
    for key, std in (
        ("The analytic solution has smaller", a["analytic_inf_std"]),
        ("The NN ensemble's uncertainty is roughly", nn_std[-1]),
    ):
        probe = std[part["probe"]]
        at_data, between = probe[is_data].mean(), probe[~is_data].mean()
        r = at_data / between
        verdict = (
            _band(r < 0.5, r < 0.9) if key.startswith("The analytic")
            else _band(2 / 3 <= r <= 1.5, 0.5 <= r <= 2)
        )  # fmt: skip
        expected[key] = (verdict, (r"= (\S+) / (\S+) = (\S+)$", [at_data, between, r]))
    assert a["mc_times"][-1] == np.inf
    mc_std = a["q_mc"][:, -1].std(axis=0)
    mc_in, lin_in = mc_std[part["in"]].mean(), a["analytic_inf_std"][part["in"]].mean()
    r_mc = mc_in / lin_in
    expected["Lin. (MC) (finite-width"] = (
        _band(r_mc > 2, r_mc > 1.2),
        (r"= (\S+) / (\S+) = (\S+) \(data-state std: ([^)]+)\)$",
         [mc_in, lin_in, r_mc, mc_std[part["probe"]][is_data].mean()]),
    )  # fmt: skip
    # fig. 7: target networks at target_steps, tau in increasing order
    taus = sorted(cfg["taus"])
    a_err = [_rmse(a[f"target_{t:g}_mean"][part["in"]], true_in) for t in taus]
    target_nn = [a[f"target_{t:g}_q_nn"].mean(axis=0)[part["in"]] for t in taus]
    n_err = [_rmse(m, true_in) for m in target_nn]
    tau_text = ", ".join(f"{t:g}" for t in taus)
    expected["A larger tau makes"] = (
        _band(bool(np.all(np.diff(a_err) < 0)), a_err[-1] < a_err[0]),
        (rf"at t = (\d+) for tau = {re.escape(tau_text)}: (.+)$", [cfg["target_steps"], a_err]),
    )
    spread = max(n_err) / min(n_err)
    expected["The trained networks' convergence"] = (
        _band(spread <= 1.5, spread <= 3),
        (rf"tau = {re.escape(tau_text)}: (.+) \(max / min = ([^)]+)\)$", [n_err, spread]),
    )
    r_t = int(np.argmin(np.abs(steps - cfg["target_steps"])))
    single = _rmse(nn_mean[r_t, part["in"]], a["analytic_mean"][r_t, part["in"]])
    dist_t = [
        _rmse(m, a[f"target_{t:g}_mean"][part["in"]]) for m, t in zip(target_nn, taus, strict=True)
    ]
    worse = np.array(dist_t) > single
    expected["With a target network"] = (
        _band(bool(worse.all()), bool(worse.any())),
        (rf"at t = (\d+): single (\S+); target \(tau = {re.escape(tau_text)}\): (.+)$",
         [steps[r_t], single, dist_t]),
    )  # fmt: skip
    # the width sweep at width_steps: RMSE(mean) + RMSE(std) against eq. 10 on [0, 1.25]
    r_w = int(np.flatnonzero(steps == cfg["width_steps"])[0])
    a_m, a_s = a["analytic_mean"][r_w, part["in"]], a["analytic_std"][r_w, part["in"]]
    widths = sorted(cfg["widths"])
    for who, tag in (("trained", "nn"), ("Lin. (MC)", "mc")):
        q = [a[f"width_{w}_q_{tag}"][:, part["in"]] for w in widths]
        d = np.array([_rmse(x.mean(0), a_m) + _rmse(x.std(0), a_s) for x in q])
        expected[f"Wider {who} ensembles"] = (
            _band(bool(np.all(np.diff(d) < 0)), d[-1] < d[0]),
            (rf"at t = (\d+) for widths {', '.join(map(str, widths))}: (.+)$",
             [cfg["width_steps"], list(d)]),
        )  # fmt: skip

    claims = summary["claims"]
    assert len(claims) == len(expected)
    for claim in claims:
        (key,) = [k for k in expected if claim["claim"].startswith(k)]
        verdict, (pattern, values) = expected.pop(key)
        assert claim["verdict"] == verdict, (claim, verdict)
        match = re.search(pattern, claim["number"])
        assert match, (pattern, claim["number"])
        for token, value in zip(match.groups(), values, strict=True):
            if isinstance(value, list):
                _assert_printed_list(token, value)
            elif isinstance(value, int | np.integer):
                assert int(token) == value, (claim["number"], value)
            else:
                _assert_printed(token, value, sig=None if isinstance(value, _Fixed) else 3)
        # report.md shows the same verdict and numbers
        cell = f"**not meaningful** (the rule gives: {verdict})"  # tiny: a smoke test
        row = f"| {claim['claim']} | {cell} | {claim['number']} | {claim['rule']} |"
        assert row in report, row
