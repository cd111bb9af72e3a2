"""tdntk.metrics against independent formulas: scipy densities, quadrature, sampling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from tdntk import metrics


def _points(seed=0, m=7):
    rng = np.random.default_rng(seed)
    return rng.normal(size=m) * 3, rng.uniform(0.2, 4.0, size=m), rng.normal(size=m) * 5


def test_rmse_by_hand():
    # sqrt((3^2 + 4^2) / 2) exactly
    assert metrics.rmse(np.zeros(2), np.array([3.0, 4.0])) == pytest.approx(
        np.sqrt(12.5), rel=1e-15
    )
    with pytest.raises(ValueError, match="shape"):
        metrics.rmse(np.zeros(2), np.zeros(3))


def test_nll_matches_scipy_logpdf():
    mean, std, y = _points()
    want = -stats.norm.logpdf(y, loc=mean, scale=std)
    np.testing.assert_allclose(metrics.gaussian_nll(mean, std, y), want, rtol=1e-13, atol=1e-13)


def test_crps_matches_quadrature():
    # CRPS = int (F(x) - 1{y <= x})^2 dx, split at y; quad tolerance 1e-10 -> compare at 1e-7
    mean, std, y = _points(1, m=4)
    for mu, s, obs in zip(mean, std, y, strict=True):

        def below(x, mu=mu, s=s):
            return stats.norm.cdf(x, mu, s) ** 2

        def above(x, mu=mu, s=s):
            return stats.norm.sf(x, mu, s) ** 2

        want = (
            integrate.quad(below, -np.inf, obs, epsabs=1e-11)[0]
            + integrate.quad(above, obs, np.inf, epsabs=1e-11)[0]
        )
        assert metrics.crps_gaussian(mu, s, obs) == pytest.approx(want, abs=1e-7)


def test_crps_matches_energy_form_by_sampling():
    # CRPS = E|X - y| - E|X - X'| / 2, X, X' ~ N(mu, s^2); 400k samples -> ~1e-2 relative
    rng = np.random.default_rng(2)
    mu, s, y = 1.0, 2.0, 2.5
    x1, x2 = rng.normal(mu, s, size=(2, 400_000))
    want = np.mean(np.abs(x1 - y)) - 0.5 * np.mean(np.abs(x1 - x2))
    assert metrics.crps_gaussian(mu, s, y) == pytest.approx(want, rel=1e-2)


def test_crps_tends_to_absolute_error():
    # std -> 0: CRPS -> |mean - y| (tolerance ~ std)
    assert metrics.crps_gaussian(2.0, 1e-9, 5.0) == pytest.approx(3.0, abs=1e-8)


def test_coverage_halfwidth_matches_scipy_quantile():
    for level in (0.5, 0.6827, 0.95, 0.99):
        want = stats.norm.ppf(0.5 + level / 2)
        assert metrics.central_interval_halfwidth(level) == pytest.approx(want, rel=1e-12)


def test_coverage_by_sampling():
    # y ~ N(mean, std^2): the covered fraction is Binomial(200k, level)/200k, se ~ 1e-3;
    # allow 5 se.
    rng = np.random.default_rng(3)
    m = 200_000
    mean = rng.normal(size=m)
    std = rng.uniform(0.5, 2.0, size=m)
    y = mean + std * rng.normal(size=m)
    for level in (0.6827, 0.95):
        frac = metrics.coverage(mean, std, y, level).mean()
        se = np.sqrt(level * (1 - level) / m)
        assert abs(frac - level) < 5 * se


def test_fit_gaussian_matches_scipy_norm_fit():
    rng = np.random.default_rng(4)
    samples = rng.normal(3.0, 2.0, size=(50, 3))
    mean, std = metrics.fit_gaussian(samples)
    for j in range(3):
        loc, scale = stats.norm.fit(samples[:, j])
        assert mean[j] == pytest.approx(loc, rel=1e-12)
        assert std[j] == pytest.approx(scale, rel=1e-12)


def test_score_summary_agrees_with_the_functions():
    mean, std, y = _points(5, m=11)
    summary = metrics.score_gaussian(mean, std, y).summary()
    assert summary["rmse"] == pytest.approx(np.sqrt(np.mean((mean - y) ** 2)), rel=1e-14)
    assert summary["nll"] == pytest.approx(-stats.norm.logpdf(y, mean, std).mean(), rel=1e-12)
    assert summary["nll_std"] == pytest.approx(stats.norm.logpdf(y, mean, std).std(), rel=1e-12)
    assert summary["coverage_95"] == pytest.approx(
        np.mean(np.abs(y - mean) <= 1.959963984540054 * std)
    )


def test_nonpositive_std_is_rejected_with_context():
    with pytest.raises(ValueError, match="std must be > 0"):
        metrics.gaussian_nll(0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="do not broadcast"):
        metrics.crps_gaussian(np.zeros(2), np.ones(3), 0.0)
