"""The shared solver machinery (``smcdiff.diffusion.solvers.base``) and its fast paths.

``Evaluator.at`` (grid-point evaluation with the grid's float64 ``alpha``/``sigma``) must
agree with the generic ``Evaluator.__call__`` / ``DiffusionModel.predict`` path, check the
model output for NaN/inf once, and defer to overridden models and evaluators. The float
(shared-grid) and tensor (per-particle grid) coefficient paths must agree. All on exact
Gaussian models in float64: tolerances are round-off (1e-12 relative unless stated).
"""

from __future__ import annotations

import math

import pytest
import torch

import smcdiff.diffusion.solvers.base as base
from smcdiff.diffusion.grids import time_grid
from smcdiff.diffusion.parametrization import KINDS, DiffusionModel, convert
from smcdiff.diffusion.processes import VE, VP, LinearInterpolant
from smcdiff.diffusion.sample import sample
from smcdiff.diffusion.solvers import (
    DDIM,
    DEIS,
    DPMSolverPP2M,
    DPMSolverPP3M,
    Evaluator,
    Heun,
    UniPC,
    prepare_grid,
)
from smcdiff.diffusion.solvers.base import lincomb, phi_functions, phis
from smcdiff.gaussian.distributions import Gaussian

F64 = torch.float64
PROC = VP()
GAUSS = Gaussian(torch.tensor([0.5, -1.0], dtype=F64),
                 torch.tensor([[0.3, 0.1], [0.1, 0.05]], dtype=F64))


def _x(n: int = 5, seed: int = 0, dtype=F64) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


# ----------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("proc", [VP(), VE(), LinearInterpolant()], ids=repr)
@pytest.mark.parametrize("model_kind", KINDS)
def test_evaluator_at_equals_predict_at_the_grid_time(proc, model_kind):
    """``ev.at(x, g, k, kind)`` = ``model.predict(x, g.t[k], kind)`` for every pair of
    kinds (it takes alpha/sigma from the grid instead of recomputing them from t)."""
    model = GAUSS.model(proc, model_kind)
    g = prepare_grid(proc, time_grid(proc, 6, final="t_min"))
    x = _x() * float(proc.sigma(g.t[2]))
    for kind in KINDS:
        ev = Evaluator(model)
        for k in (0, 2, 5):
            ref = model.predict(x, g.t[k], kind)
            assert _rel(ev.at(x, g, k, kind), ref) < 1e-12, (kind, k)
        assert ev.nfe == 3


def test_evaluator_at_per_particle_grid():
    """Per-particle grid: the conversion uses the grid's rows, the net gets the rows in x's
    dtype (as from ``ev(x, g.t[k], kind)``)."""
    seen = []

    def net(x, t):
        seen.append(t)
        return GAUSS.eps(x, t, PROC)

    model = DiffusionModel(net, PROC, "eps")
    grid = torch.stack([time_grid(PROC, 4), time_grid(PROC, 4, t_start=0.8)], dim=-1)
    g = prepare_grid(PROC, grid)  # [5, 2]
    x = _x(2)
    for kind in KINDS:
        a = Evaluator(model).at(x, g, 1, kind)
        b = Evaluator(model)(x, g.t[1], kind)
        assert _rel(a, b) < 1e-12, kind
    assert all(t.shape == (2,) and t.dtype == x.dtype for t in seen)
    x32 = x.float()
    assert Evaluator(model).at(x32, g, 1, "x0").dtype == torch.float32
    assert seen[-1].dtype == torch.float32


def test_finiteness_is_checked_once_per_evaluation(monkeypatch):
    """One host synchronisation per network call: ``all_finite`` runs once per evaluation
    (on the converted prediction), not on the raw output and again on the prediction."""
    calls = []
    real = base.all_finite

    def counting(t):
        calls.append(t.shape)
        return real(t)

    monkeypatch.setattr(base, "all_finite", counting)
    x = _x()
    for solver in (DPMSolverPP2M(), UniPC(p=3), DEIS(order=3), Heun(), DDIM()):
        calls.clear()
        res = sample(GAUSS.model(PROC, "eps"), solver, num_steps=6, x_init=x)
        assert len(calls) == res.nfe, repr(solver)


class _Doubled(DiffusionModel):
    """A model whose predict is overridden: solvers must go through it."""

    def predict(self, x, t, kind, **cond):
        return 2 * super().predict(x, t, kind, **cond)


class _Preset(Evaluator):
    """An evaluator that answers at one preset point (as smcdiff.fk does)."""

    def __init__(self, model, x, D):
        super().__init__(model)
        self._x, self._D = x, D

    def __call__(self, x, t, kind):
        if x is self._x:
            return convert(self._D, "x0", kind, x, t, self.model.process)
        return super().__call__(x, t, kind)


def test_overridden_models_and_evaluators_are_respected():
    g = prepare_grid(PROC, time_grid(PROC, 5))
    x = _x()
    m = _Doubled(lambda x, t: GAUSS.eps(x, t, PROC), PROC, "eps")
    plain = GAUSS.model(PROC, "eps")
    assert _rel(Evaluator(m).at(x, g, 1, "x0"), 2 * plain.predict(x, g.t[1], "x0")) < 1e-12
    D = torch.full_like(x, 0.25)
    plain.reset_nfe()
    ev = _Preset(plain, x, D)
    assert bool((ev.at(x, g, 1, "x0") == D).all())
    assert _rel(ev.at(x, g, 1, "eps"), convert(D, "x0", "eps", x, g.t[1], PROC)) < 1e-15
    assert plain.nfe == 0  # answered from the preset, no network call
    # a grid of another process than the model's: the model's process converts
    g_ve = prepare_grid(VE(), time_grid(VE(), 5))
    ref = plain.predict(x, g_ve.t[2], "x0")
    assert _rel(Evaluator(plain).at(x, g_ve, 2, "x0"), ref) < 1e-12


@pytest.mark.parametrize("model_check,ev_check", [(True, True), (True, False), (False, True),
                                                  (False, False)])
def test_nan_errors_follow_both_switches(model_check, ev_check):
    """The model's check (on the raw output, its own message) and the evaluator's (on the
    prediction, naming the step) keep their meaning with the single test."""
    model = DiffusionModel(lambda x, t: x * math.nan, PROC, "eps", check_finite=model_check)
    g = prepare_grid(PROC, time_grid(PROC, 5))
    ev = Evaluator(model, check_finite=ev_check)
    ev.step = 3
    t_name = f"{float(g.t[2]):.6f}"[:6]
    if not (model_check or ev_check):
        assert bool(ev.at(_x(), g, 2, "x0").isnan().all())
        return
    with pytest.raises(ValueError) as info:
        ev.at(_x(), g, 2, "x0")
    msg = str(info.value)
    assert "step 3" in msg and t_name in msg
    assert ("net output (kind 'eps')" in msg) == model_check


def test_nonfinite_conversion_of_a_finite_output_is_caught():
    """A finite output whose conversion is not finite (x0 from eps at alpha = 0) is the
    evaluator's error, as before."""
    proc = LinearInterpolant()
    model = DiffusionModel(lambda x, t: torch.ones_like(x), proc, "eps")
    g = prepare_grid(proc, torch.tensor([1.0, 0.5, 0.0], dtype=F64))
    with pytest.raises(ValueError, match=r"prediction \('x0'\) is NaN or infinite"):
        Evaluator(model).at(_x(), g, 0, "x0")


# ----------------------------------------------------------------------------- coefficients


def test_phis_float_equals_tensor():
    zs = [-7.3, -2.0, -1.0, -0.999, -0.3, -1e-9, 0.0, 1e-7, 0.5, 1.0, 1.0001, 2.4, 9.0]
    ref = phi_functions(torch.tensor(zs, dtype=F64), 4)
    for j, z in enumerate(zs):
        got = phis(float(z), 4)
        for k in range(4):
            assert math.isclose(got[k], float(ref[k][j]), rel_tol=1e-14, abs_tol=1e-300), (z, k)
    assert phis(0.0, 3) == [1.0, 0.5, 1 / 6]


def test_lincomb_float_and_tensor_paths_agree():
    g1 = prepare_grid(PROC, time_grid(PROC, 4))
    gp = prepare_grid(PROC, time_grid(PROC, 4)[:, None].expand(5, 3).clone())  # per-particle
    x, y = _x(3, 1), _x(3, 2)
    a = lincomb(g1, x, [(0.3, x), (-1.7, y)])
    b = lincomb(gp, x, [(torch.full((3,), 0.3, dtype=F64), x),
                        (torch.full((3,), -1.7, dtype=F64), y)])
    assert _rel(a, 0.3 * x - 1.7 * y) < 1e-15 and _rel(b, a) < 1e-15
    assert _rel(x, _x(3, 1)) == 0  # inputs untouched


@pytest.mark.parametrize(
    "solver", [DPMSolverPP2M(), DPMSolverPP3M(), DPMSolverPP3M(variant="compat"), UniPC(p=2),
               UniPC(p=3, variant="bh1"), DEIS(order=2), DEIS(order=3)], ids=repr)
def test_per_particle_grid_with_equal_columns_equals_the_shared_grid(solver):
    """The tensor (per-particle) coefficient path gives the shared (float) path's result,
    including UniPC's linear solves and 3M's adaptive rules."""
    for kind, final in (("logsnr", "zero"), ("uniform", "t_min")):
        grid = time_grid(PROC, 9, kind=kind, final=final)
        x = _x(4) * float(PROC.sigma(grid[0]))
        model = GAUSS.model(PROC, "eps")
        a = sample(model, solver, grid, x)
        b = sample(model, solver, grid[:, None].expand(10, 4).clone(), x)
        assert a.orders == b.orders
        assert _rel(b.x, a.x) < 1e-12, (kind, final)


def test_grid_cache_is_reused_and_results_repeat():
    """Coefficients are cached on the prepared grid; a second run on it is identical."""
    g = prepare_grid(PROC, time_grid(PROC, 8))
    model = GAUSS.model(PROC, "eps")
    x = _x()
    a = sample(model, UniPC(p=3), g, x).x
    n = len(g._cache)
    assert n > 0
    b = sample(model, UniPC(p=3), g, x).x
    assert len(g._cache) == n and bool((a == b).all())


def test_prepare_grid_flags():
    g = prepare_grid(PROC, time_grid(PROC, 3, final="zero"))
    assert g.data_end == (False, False, False, True) and g.noise_start == (False,) * 4
    lin = LinearInterpolant()
    g = prepare_grid(lin, torch.tensor([1.0, 0.5, 0.0], dtype=F64))
    assert g.noise_start == (True, False, False) and g.data_end == (False, False, True)
    assert g.values()[2][0] == -math.inf and g.values()[2][-1] == math.inf
