"""TD-trained ensembles against independent routes (issue 4, points 1, 3, 4, 5).

References: a plain Python loop of `jax.grad` steps per member with the TD loss
written here (G P built densely), the analytic closed form (`TDNTK`) for the
wide ensemble, the linearisations of `tdntk.empirical` for the width sweep, and
a second process with 4 forced CPU devices for sharding.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_problem

import tdntk
from tdntk import Schedule, SoftTarget
from tdntk import training as training_module
from tdntk.empirical import linearised_ensemble
from tdntk.training import default_record_steps, init_ensemble, train_ensemble

SMALL = tdntk.MLP(depth=2, width=32)


def dense_gp(data):
    """(n, n k) matrix G P built entry by entry."""
    gp = np.zeros((data.n, data.n * data.k))
    for i in range(data.n):
        for j in range(data.k):
            gp[i, i * data.k + j] = data.discount[i] * data.next_weights[i, j]
    return gp


def normal_params(net, input_dim, members, seed):
    """Standard-normal parameters (omega, beta of eq. 4) drawn with NumPy: leaves (E, ...)."""
    rng = np.random.default_rng(seed)
    sizes = [input_dim] + [net.width] * net.depth + [1]
    return [
        {"w": rng.normal(size=(members, a, b)), "b": rng.normal(size=(members, b))}
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def reference_members(net, data, x_eval, lr, steps, record, params0, tau, hard_every):
    """Each member trained alone by a Python loop of float64 gradient steps (loss written here).

    Returns a list over members of (records dict, final params).
    """
    gp = jnp.asarray(dense_gp(data))
    x, x_next = jnp.asarray(data.x), jnp.asarray(data.x_next_flat)
    r = jnp.asarray(data.reward)

    def loss(p, p_bar):
        boot = gp @ net.apply(p if tau is None else jax.lax.stop_gradient(p_bar), x_next)
        return 0.5 * jnp.sum((net.apply(p, x) - r - boot) ** 2)

    grad = jax.jit(jax.grad(loss))
    results = []
    for i in range(jax.tree.leaves(params0)[0].shape[0]):
        p0 = jax.tree.map(lambda a, i=i: jnp.asarray(a[i], jnp.float64), params0)
        p, p_bar = p0, p0
        out = {"q": [], "loss": [], "distance": []}
        flat0 = jax.flatten_util.ravel_pytree(p0)[0]
        for k in range(steps + 1):
            if k in record:
                flat = jax.flatten_util.ravel_pytree(p)[0]
                out["q"].append(np.asarray(net.apply(p, jnp.asarray(x_eval))))
                out["loss"].append(float(loss(p, p_bar)))
                dist = jnp.linalg.norm(flat - flat0) / jnp.linalg.norm(flat0)
                out["distance"].append(float(dist))
            if k == steps:
                break
            g = grad(p, p_bar)
            p = jax.tree.map(lambda a, b: a - lr * b, p, g)
            if tau is not None:
                p_bar = jax.tree.map(lambda a, b: (1 - tau) * a + tau * b, p_bar, p)
                if hard_every and (k + 1) % hard_every == 0:
                    p_bar = p
        results.append(({k: np.array(v) for k, v in out.items()}, p))
    return results


@pytest.mark.parametrize(
    "member_map,tau,hard_every", [("vmap", None, None), ("map", 0.3, 3)], ids=["vmap", "map"]
)
def test_vectorised_ensemble_equals_each_member_alone(member_map, tau, hard_every):
    data, x_eval = make_problem(seed=1)
    record = [0, 2, 7]
    res = train_ensemble(
        SMALL,
        data,
        Schedule(0.05, None if tau is None else SoftTarget(tau)),
        7,
        3,
        x_eval,
        seed=4,
        hard_update_every=hard_every,
        record_steps=[2],
        dtype=jnp.float64,
        progress=False,
        member_map=member_map,
    )
    np.testing.assert_array_equal(res.steps, record)
    assert res.q.shape == (3, 3, x_eval.shape[0]) and res.member_map == member_map
    # res.params0 are init_ensemble's (test_init_ensemble_members_are_reproducible_alone)
    with jax.enable_x64(True):
        refs = reference_members(SMALL, data, x_eval, 0.05, 7, record, res.params0, tau, hard_every)
    for i, (ref, p_final) in enumerate(refs):
        # float64 round-off of two summation orders: 1e-10 relative
        np.testing.assert_allclose(res.q[:, i], ref["q"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(res.loss[:, i], ref["loss"], rtol=1e-10)
        np.testing.assert_allclose(res.param_distance[:, i], ref["distance"], rtol=1e-8)
        for got, want in zip(jax.tree.leaves(res.params), jax.tree.leaves(p_final), strict=True):
            np.testing.assert_allclose(got[i], want, rtol=1e-10, atol=1e-12)
    assert np.all(res.param_distance[0] == 0) and np.all(res.param_distance[-1] > 0)
    # the parameters moved far enough for the comparison to mean something
    assert np.max(np.abs(res.q[-1] - res.q[0])) > 1e-2


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, monkeypatch):
    data, x_eval = make_problem(seed=2)
    kwargs = dict(
        hard_update_every=5, record_steps=[3, 6, 9], record_params=True,
        progress=False, params0=normal_params(SMALL, 3, 2, seed=1),
    )  # fmt: skip
    schedule = Schedule(0.05, SoftTarget(0.2))
    full = train_ensemble(SMALL, data, schedule, 12, 2, x_eval, checkpoint_dir=tmp_path / "a",
                          **kwargs)  # fmt: skip

    real_write = training_module._write_checkpoint
    calls = []

    def write_then_interrupt(*args, **kw):
        real_write(*args, **kw)
        calls.append(1)
        if len(calls) == 3:  # right after the checkpoint at step 6
            raise KeyboardInterrupt

    monkeypatch.setattr(training_module, "_write_checkpoint", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(SMALL, data, schedule, 12, 2, x_eval, checkpoint_dir=tmp_path / "b",
                       **kwargs)  # fmt: skip
    monkeypatch.setattr(training_module, "_write_checkpoint", real_write)
    resumed = train_ensemble(
        SMALL, data, schedule, 12, 2, x_eval, checkpoint_dir=tmp_path / "b", resume=True, **kwargs
    )
    # same compiled step from the same state: bit-for-bit equal
    for name in ("steps", "q", "loss", "param_distance", "param_rms"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(full, name))
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree.leaves(resumed.param_history), jax.tree.leaves(full.param_history), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="learning_rate"):
        train_ensemble(
            SMALL, data, Schedule(0.07, SoftTarget(0.2)), 12, 2, x_eval,
            checkpoint_dir=tmp_path / "b", resume=True, **kwargs,
        )  # fmt: skip


def _assert_same_run(got, want):
    """Bit-for-bit equal records and final parameters."""
    for name in ("steps", "q", "loss", "param_distance", "param_rms"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_mid_chunk_wall_clock_checkpoint_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Interrupted right after a wall-clock checkpoint between two record points, resumed with
    another split of steps into compiled calls: equal to an uninterrupted run, bit for bit."""
    data, x_eval = make_problem(seed=2)  # the problem and schedule above: compiled once
    kwargs = dict(hard_update_every=5, record_steps=[30], progress=False, seed=2)
    schedule = Schedule(0.05, SoftTarget(0.2))
    full = train_ensemble(SMALL, data, schedule, 40, 2, x_eval, **kwargs)

    real_write = training_module._write_checkpoint
    written = []

    def write_then_fail(path, fingerprint, step, *args, **kw):
        real_write(path, fingerprint, step, *args, **kw)
        written.append(step)
        if step == 11:  # calls of 8, 1, 1, 1 steps: between the records at 0 and 30
            raise RuntimeError("killed (simulated)")

    monkeypatch.setattr(training_module, "_SECONDS_PER_CALL", 1e-9)  # 1 step per call
    monkeypatch.setattr(training_module, "_write_checkpoint", write_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        train_ensemble(SMALL, data, schedule, 40, 2, x_eval, checkpoint_dir=tmp_path,
                       checkpoint_every_s=0, **kwargs)  # fmt: skip
    assert written == list(range(12))  # every call checkpoints with an interval of 0
    with np.load(tmp_path / "checkpoint.npz") as f:
        assert int(f["step"]) == 11 and f["rec_steps"].tolist() == [0]
    monkeypatch.undo()  # resume with the usual calls of ~1 s (here: the remaining 29 at once)
    resumed = train_ensemble(SMALL, data, schedule, 40, 2, x_eval, checkpoint_dir=tmp_path,
                             resume=True, **kwargs)  # fmt: skip
    _assert_same_run(resumed, full)
    assert np.max(np.abs(full.q[-1] - full.q[0])) > 1e-3  # training moved the outputs


def test_ctrl_c_saves_a_checkpoint_and_resumes_bit_for_bit(tmp_path, monkeypatch, python_sigint):
    """SIGINT during a compiled call: training stops after it with a checkpoint (no record
    point there, no interval due) and KeyboardInterrupt; resuming gives the uninterrupted run."""
    import signal

    data, x_eval = make_problem(seed=4)
    kwargs = dict(record_steps=[32], progress=False, seed=1, checkpoint_every_s=float("inf"))
    schedule = Schedule(0.05)
    full = train_ensemble(SMALL, data, schedule, 48, 2, x_eval, **kwargs)
    real_compiled = training_module._compiled
    calls = []

    def compiled(spec, devices):
        fn = real_compiled(spec, devices)

        def chunk(*args):
            calls.append(int(args[5]))
            if len(calls) == 4:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C during the call of step 3
            return fn(*args)

        return chunk

    monkeypatch.setattr(training_module, "_compiled", compiled)
    monkeypatch.setattr(training_module, "_SECONDS_PER_CALL", 1e-9)
    with pytest.raises(KeyboardInterrupt, match="stopped at step 3 of 48"):
        train_ensemble(SMALL, data, schedule, 48, 2, x_eval, checkpoint_dir=tmp_path, **kwargs)
    assert calls == [0, 1, 1, 1]  # the record at step 0, then one step per call
    with np.load(tmp_path / "checkpoint.npz") as f:
        assert int(f["step"]) == 3 and f["rec_steps"].tolist() == [0]
    monkeypatch.undo()
    resumed = train_ensemble(SMALL, data, schedule, 48, 2, x_eval, checkpoint_dir=tmp_path,
                             resume=True, **kwargs)  # fmt: skip
    _assert_same_run(resumed, full)


def test_gap_to_linearisation_shrinks_with_width():
    """Issue point 3: ||Q_nn - Q_lin|| at fixed lr and steps falls with width (mean of 3 seeds).

    float32 training: its round-off (~1e-6) is far below the smallest gap (~5e-3).
    """
    data, x_eval = make_problem(seed=3, n=6, k=1)
    lr, steps, members = 0.1, 30, 3
    gaps, moves = [], []
    for width in (64, 256, 1024):
        net = tdntk.MLP(depth=2, width=width)
        res = train_ensemble(
            net,
            data,
            Schedule(lr),
            steps,
            members,
            x_eval,
            record_steps=[],
            progress=False,
            params0=normal_params(net, data.input_dim, members, seed=width),
        )
        q_lin = linearised_ensemble(
            net, res.params0, data, x_eval, steps, Schedule(lr, time="discrete"), progress=False
        )[:, 0]
        gaps.append(np.mean(np.sqrt(np.mean((res.q[-1] - q_lin) ** 2, axis=1))))
        moves.append(np.mean(np.sqrt(np.mean((q_lin - res.q[0]) ** 2, axis=1))))
    # monotone, and close to the 1/sqrt(width) rate (factor 4 from 64 to 1024; allow 2)
    assert gaps[0] > gaps[1] > gaps[2], gaps
    assert gaps[2] < gaps[0] / 2, gaps
    # the networks moved far more than the gap: the comparison is not trivially small
    assert min(moves) > 10 * gaps[2], (moves, gaps)


def test_wide_ensemble_matches_analytic_closed_form():
    """Issue point 4: E = 4096 trained members of width 1024 vs the infinite-width mean and
    variance of eq. 10 (discrete time), at step 0 and after 40 steps, point by point.

    One hidden layer keeps a member cheap (no width x width layer), so 4096 members train in
    ~2 s; the kernels of deeper networks are checked in test_nets.py.

    Tolerance per point, in standard errors (SE) of the Monte Carlo estimates (a correct
    prediction fails with probability ~7e-6 per point at 4.5 SE; 20 points):
    * variance: 4.5 SE of the sample variance of E Gaussian draws, var sqrt(2 / (E - 1)),
      i.e. +-10 % relative. The finite-width and nonlinear-training deviation is smaller
      (measured with 16384 members: <= 1.7 % relative at widths 512-2048), no allowance.
    * mean: 4.5 SE of the sample mean, sqrt(var / E) = 1.6 % of the std, plus at step 40 an
      allowance of 0.06 std for the finite-width deviation of a trained ensemble's mean,
      twice the largest measured (0.031 std at width 1024, 16384 members); at step 0 the
      mean is 0 at any width (odd in the readout), no allowance.
    """
    data, x_eval = make_problem(seed=5, n=6, k=2)
    net = tdntk.MLP(depth=1, width=1024)
    members, lr, steps = 4096, 0.05, 40
    res = train_ensemble(
        net,
        data,
        Schedule(lr),
        steps,
        members,
        x_eval,
        record_steps=[],
        progress=False,
        params0=normal_params(net, data.input_dim, members, seed=0),
    )
    pred = tdntk.TDNTK(net, data, Schedule(lr, time="discrete")).predict(
        x_eval, [0, steps], full_cov=False
    )
    mean_mc, var_mc = res.q.mean(axis=1), res.q.var(axis=1, ddof=1)
    se_mean = np.sqrt(pred.var / members)
    se_var = pred.var * np.sqrt(2 / (members - 1))
    allowance = np.array([[0.0], [0.06]]) * pred.std  # (2, m): steps 0 and 40
    z_mean = (mean_mc - pred.mean) / se_mean
    z_var = (var_mc - pred.var) / se_var
    assert np.all(np.abs(mean_mc - pred.mean) < 4.5 * se_mean + allowance), (z_mean, allowance)
    assert np.all(np.abs(z_var) < 4.5), z_var
    # training moved the mean and the variance by far more than the tolerance, so a
    # prediction stuck at the prior (or a wrong time) fails
    assert np.max(np.abs(pred.mean[1]) / (4.5 * se_mean[1] + allowance[1])) > 4
    assert np.max(np.abs(pred.var[1] - pred.var[0]) / se_var[1]) > 9 * 4.5


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import make_problem
    from test_training import SMALL, normal_params
    from tdntk import Schedule, SoftTarget
    from tdntk.training import train_ensemble
    assert jax.device_count() == 4, jax.devices()
    data, x_eval = make_problem(seed=1)
    out = {{}}
    for mm in ("map", "vmap"):
        res = train_ensemble(SMALL, data, Schedule(0.05, SoftTarget(0.3)), 9, 6, x_eval,
                             hard_update_every=3, dtype=jnp.float64, progress=False,
                             member_map=mm, params0=normal_params(SMALL, 3, 6, seed=6))
        assert res.devices == 4
        out[mm + "_q"] = res.q
        out[mm + "_loss"] = res.loss
        out[mm + "_w"] = res.params[1]["w"]
    np.savez({path!r}, **out)
    """
)


def test_sharded_over_four_devices_equals_unsharded(tmp_path):
    """6 members over 4 devices (padded to 8), both member maps, vs one device."""
    path = tmp_path / "sharded.npz"
    script = _SHARDED_SCRIPT.format(tests=os.path.dirname(__file__), path=str(path))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    sharded = np.load(path)
    data, x_eval = make_problem(seed=1)
    for mm in ("map", "vmap"):
        res = train_ensemble(
            SMALL,
            data,
            Schedule(0.05, SoftTarget(0.3)),
            9,
            6,
            x_eval,
            hard_update_every=3,
            dtype=jnp.float64,
            progress=False,
            member_map=mm,
            params0=normal_params(SMALL, 3, 6, seed=6),
        )
        assert res.devices == 1
        # float64, the same per-member arithmetic on each device: 1e-12 relative
        np.testing.assert_allclose(sharded[mm + "_q"], res.q, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(sharded[mm + "_loss"], res.loss, rtol=1e-12)
        np.testing.assert_allclose(sharded[mm + "_w"], res.params[1]["w"], rtol=1e-12, atol=1e-13)


def test_init_ensemble_members_are_reproducible_alone():
    net = tdntk.MLP(depth=1, width=8)
    with jax.enable_x64(True):
        params = init_ensemble(net, 3, 4, seed=9, dtype=jnp.float64)
        init = jax.jit(net.init, static_argnums=(1, 2))
        for i in range(4):  # every member, each drawn alone from fold_in(PRNGKey(seed), i)
            alone = init(jax.random.fold_in(jax.random.PRNGKey(9), i), 3, jnp.float64)
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(alone), strict=True):
                assert a.shape == (4, *b.shape)
                np.testing.assert_array_equal(a[i], b)  # the same random bits
    # the members differ from each other, so the equalities above identify each member
    for a in jax.tree.leaves(params):
        assert len({np.asarray(a[i]).tobytes() for i in range(4)}) == 4


def test_default_record_steps_and_input_validation():
    np.testing.assert_array_equal(default_record_steps(10), [0, 1, 2, 4, 8, 10])
    np.testing.assert_array_equal(default_record_steps(0), [0])
    data, x_eval = make_problem()
    bad = [
        (dict(steps=-1), "steps must be an integer >= 0"),
        (dict(steps=2.5), "steps must be an integer"),
        (dict(members=0), "members must be an integer >= 1"),
        (dict(x_eval=x_eval[:, :2]), r"x_eval must have shape \(m, 3\)"),
        (dict(hard_update_every=4), "hard_update_every needs a target"),
        (dict(schedule=Schedule(0.01, SoftTarget(1.5))), "tau must be <= 1"),
        (dict(record_steps=[20]), r"record_steps must lie in \[0, steps=5\]"),
        (dict(member_map="pmap"), "member_map must be one of"),
        (dict(resume=True), "resume=True needs a checkpoint_dir"),
        (dict(params0=normal_params(SMALL, 3, 3, seed=0)), "params0 must have the layout"),
    ]
    base = dict(steps=5, members=2, x_eval=x_eval, schedule=Schedule(0.01), progress=False)
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            train_ensemble(SMALL, data, **{**base, **change})


@pytest.mark.parametrize("tau", [None, 0.1])
def test_learning_rate_above_critical_rate_warns(tau):
    """The warning fires above 2 / (l_max + l_min) (eq. 11) and not below it.

    Reference eigenvalues from the dense Theta_bar = (A - G P B) Theta (A - G P B)^T
    with A, B selecting X and X'' (single network; eq. 9), or Theta_XX (target).
    """
    data, x_eval = make_problem()
    n = data.n
    x = np.concatenate([data.x, data.x_next_flat])
    ntk = np.asarray(SMALL.kernels(x, x)[1])
    if tau is None:
        delta = np.concatenate([np.eye(n), -dense_gp(data)], axis=1)
        ntk = delta @ ntk @ delta.T
    evals = np.linalg.eigvalsh(ntk[:n, :n])
    critical = 2.0 / (evals[0] + evals[-1])
    target = None if tau is None else SoftTarget(tau)
    base = dict(steps=1, members=1, x_eval=x_eval, progress=False)
    with pytest.warns(tdntk.LearningRateWarning, match="train_ensemble: learning_rate"):
        train_ensemble(SMALL, data, Schedule(1.01 * critical, target), **base)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tdntk.LearningRateWarning)
        train_ensemble(SMALL, data, Schedule(0.99 * critical, target), **base)
