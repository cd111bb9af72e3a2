"""The toy experiment end to end at the tiny preset, through the `tdntk toy` command."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tdntk.cli import main
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
    for claim in summary["claims"]:
        assert claim["verdict"] in ("reproduced", "partly", "not reproduced")
        assert f"**{claim['verdict']}**" in text
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


def test_cli_help_lists_the_config_fields():
    result = CliRunner().invoke(main, ["toy", "--help"])
    assert result.exit_code == 0
    for field in dataclasses.fields(ToyConfig):
        assert "--" + field.name.replace("_", "-") in result.output
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
