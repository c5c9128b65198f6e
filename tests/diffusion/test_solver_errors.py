"""Bad input to the solvers and to ``sample`` gets a clear error (issue 3).

Each test names the offending argument in the expected message: times outside ``[0, 1]``,
non-monotone grids, NFE budgets / step counts too small for the solver's order, NaN model
outputs (naming the solver step and the time), unknown solver names (listing the known
ones), and ``x_init`` of the wrong kind, shape, dtype or device.

"Too small" (``NFETooSmallError``, a ``ValueError``): a run that never takes a step of the
solver's nominal order, e.g. a multistep order-3 solver with fewer than 3 regular steps
(warm-up orders 1, 2), a 2-NFE-per-step solver whose budget only pays for the 1-NFE final
denoise step, or DPM-Solver-3 whose DPM-Solver-fast split of the budget has no order-3
step. Budgets that do not divide evenly are not errors: the run uses at most ``nfe``.
"""

from __future__ import annotations

import pytest
import torch

from smcdiff.diffusion.grids import time_grid
from smcdiff.diffusion.parametrization import DiffusionModel
from smcdiff.diffusion.processes import VP
from smcdiff.diffusion.sample import sample
from smcdiff.diffusion.solvers import (
    DDIM,
    DDPM,
    SOLVERS,
    DPMSolver,
    DPMSolverPP2M,
    DPMSolverPP2S,
    DPMSolverPP3M,
    Euler,
    Evaluator,
    FixedNoise,
    Heun,
    History,
    NFETooSmallError,
    UniPC,
    get_solver,
    prepare_grid,
    transition,
)
from smcdiff.gaussian.distributions import Gaussian

F64 = torch.float64
PROC = VP()
GAUSS = Gaussian(torch.tensor([0.5, -1.0], dtype=F64),
                 torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64))
MODEL = GAUSS.model(PROC)


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)


# ----------------------------------------------------------------------------- times


@pytest.mark.parametrize("grid,index", [([1.2, 0.5, 0.0], 0), ([0.9, 0.5, -0.1], 2),
                                        ([0.9, 1.5, 0.0], 1)])
def test_time_outside_unit_interval(grid, index):
    with pytest.raises(ValueError, match=rf"\[0, 1\].*grid\[{index}\]"):
        sample(MODEL, DDIM(), torch.tensor(grid, dtype=F64), _x())


def test_time_outside_unit_interval_in_grid_options_and_per_particle_grids():
    with pytest.raises(ValueError, match=r"t_start must lie in \(0, 1\]"):
        sample(MODEL, DDIM(), num_steps=3, t_start=1.5, x_init=_x())
    with pytest.raises(ValueError, match="t_end"):
        sample(MODEL, DDIM(), nfe=5, t_end=-0.1, x_init=_x())
    with pytest.raises(ValueError, match=r"t_start must lie in \(0, 1\]"):
        sample(MODEL, DPMSolver(order=3), nfe=10, grid_kind="uniform", t_start=2.0,
               x_init=_x())
    per_particle = torch.tensor([[0.9, 0.9, 0.9], [0.5, 1.3, 0.5], [0.0, 0.0, 0.0]], dtype=F64)
    with pytest.raises(ValueError, match=r"\[0, 1\].*grid\[1\]"):
        sample(MODEL, DDIM(), per_particle, _x())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        transition(MODEL, DDIM(), _x(), None, 0, [1.0, -0.5])


def test_model_called_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MODEL.eps(_x(), 1.5)


# ----------------------------------------------------------------------------- monotone


@pytest.mark.parametrize("grid,index", [([0.9, 0.5, 0.6, 0.0], 1), ([0.9, 0.5, 0.5, 0.0], 1),
                                        ([0.0, 0.5, 0.9], 0)])
def test_non_monotone_grid_names_the_index(grid, index):
    with pytest.raises(ValueError, match=rf"strictly decreasing.*grid\[{index}\]"):
        sample(MODEL, DDIM(), torch.tensor(grid, dtype=F64), _x())


def test_non_monotone_per_particle_grid_and_other_bad_grids():
    g = torch.tensor([[0.9, 0.9], [0.5, 0.95], [0.0, 0.0]], dtype=F64)  # column 1 goes up
    with pytest.raises(ValueError, match=r"strictly decreasing.*grid\[0\]"):
        sample(MODEL, DDIM(), g, _x(2))
    with pytest.raises(ValueError, match="NaN at index 1"):
        sample(MODEL, DDIM(), torch.tensor([0.9, float("nan"), 0.0]), _x())
    with pytest.raises(ValueError, match="at least 2"):
        sample(MODEL, DDIM(), torch.tensor([0.9]), _x())
    with pytest.raises(ValueError, match=r"grid\[1\] = \[0.0\] <= grid\[2\]"):
        sample(MODEL, DDIM(), torch.tensor([0.9, 0.0, 0.0]), _x())
    with pytest.raises(ValueError, match="exactly one"):
        sample(MODEL, DDIM(), torch.tensor([0.9, 0.0]), _x(), num_steps=3)
    with pytest.raises(ValueError, match="exactly one"):
        sample(MODEL, DDIM(), x_init=_x())
    with pytest.raises(ValueError, match="x_init or shape"):
        sample(MODEL, DDIM(), num_steps=3)


# ----------------------------------------------------------------------------- NFE


@pytest.mark.parametrize(
    "solver,nfe,final,need",
    [
        # multistep order 3: warm-up orders 1, 2, then the 1-NFE denoise step
        (DPMSolverPP3M(), 3, "zero", 4),
        (DPMSolverPP3M(), 2, "t_min", 3),
        (UniPC(p=3), 3, "zero", 4),  # predictor order 3 (UniPC-3 has order 4)
        # 2 NFE per step: the budget only pays for the denoise step, or for nothing
        (Heun(), 2, "zero", 3),
        (DPMSolverPP2S(), 2, "zero", 3),
        (Heun(), 1, "t_min", 2),
        # singlestep DPM-Solver-3: DPM-Solver-fast splits 3 evaluations into [2, 1]
        (DPMSolver(order=3), 2, "zero", 5),
        (DPMSolver(order=3), 4, "zero", 5),
        (DPMSolver(order=3), 3, "t_min", 4),
        (DPMSolver(order=2), 2, "zero", 3),
        (DPMSolver(order=3), 1, "zero", 5),
        (DPMSolver(order=3, fast=False), 3, "zero", 4),
    ],
    ids=lambda v: repr(v) if not isinstance(v, (int, str)) else str(v),
)
def test_nfe_too_small_for_the_order(solver, nfe, final, need):
    with pytest.raises(NFETooSmallError, match=rf"too small.*needs nfe >= {need}"):
        sample(MODEL, solver, nfe=nfe, final=final, x_init=_x())
    res = sample(MODEL, solver, nfe=need, final=final, x_init=_x())  # the minimum works
    assert res.nfe <= need and max(res.orders) == min(solver.order, solver.max_step_order)


def test_uneven_budgets_are_not_errors():
    """An odd budget for a 2-NFE-per-step solver (to t_min) leaves one evaluation unused;
    with the final denoise step it is used exactly. DPM-Solver-fast uses every one."""
    res = sample(MODEL, Heun(), nfe=7, final="t_min", x_init=_x())
    assert res.nfe == 6 and res.orders == (2, 2, 2)
    res = sample(MODEL, Heun(), nfe=7, final="zero", x_init=_x())
    assert res.nfe == 7 and res.orders == (2, 2, 2, 1)
    res = sample(MODEL, DPMSolver(order=2), nfe=7, final="t_min", x_init=_x())
    assert res.nfe == 7 and res.orders == (2, 2, 2, 1)


def test_nfe_and_num_steps_of_the_wrong_kind():
    with pytest.raises(ValueError, match="nfe must be >= 1"):
        sample(MODEL, DDIM(), nfe=0, x_init=_x())
    with pytest.raises(TypeError, match="nfe must be an int"):
        sample(MODEL, DDIM(), nfe=10.0, x_init=_x())
    with pytest.raises(TypeError, match="nfe must be an int"):
        sample(MODEL, DDIM(), nfe=True, x_init=_x())
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        sample(MODEL, DDIM(), num_steps=0, x_init=_x())


def test_step_count_too_small_for_the_order():
    with pytest.raises(NFETooSmallError, match=r"step orders \[1, 2, 1\].*order 3"):
        sample(MODEL, DPMSolverPP3M(), num_steps=3, x_init=_x())
    with pytest.raises(NFETooSmallError, match="never reaches order 2"):
        sample(MODEL, DPMSolverPP2M(), num_steps=1, x_init=_x())


def test_explicit_dpm_solver_orders_must_fit_the_grid():
    with pytest.raises(ValueError, match="orders has 2 entries but the grid has 4 regular"):
        sample(MODEL, DPMSolver(order=3, orders=(3, 2)), num_steps=5, x_init=_x())
    with pytest.raises(ValueError, match=r"orders must be .* in \[1, order=2\]"):
        DPMSolver(order=2, orders=(3, 1))
    with pytest.raises(ValueError, match="orders must be"):
        DPMSolver(order=3, orders=())
    with pytest.raises(ValueError, match="solver_type"):
        DPMSolver(order=2, solver_type="midpoint")


# ----------------------------------------------------------------------------- NaN outputs


def _nan_below(t_bad: float, kind: str = "eps", check_finite: bool = True) -> DiffusionModel:
    def net(x, t):
        out = GAUSS.eps(x, t, PROC)
        return out * float("nan") if float(t) < t_bad else out

    return DiffusionModel(net, PROC, kind, check_finite=check_finite)


@pytest.mark.parametrize(
    "solver,ahead",
    [(DPMSolverPP2M(), 0), (DDIM(), 0), (UniPC(p=2), 0),
     (Heun(), 1)],  # Heun's second evaluation of step i is at grid[i + 1]
    ids=lambda v: repr(v) if not isinstance(v, int) else str(v),
)
@pytest.mark.parametrize("check_finite", [True, False])
def test_nan_model_output_names_the_step_and_time(solver, ahead, check_finite):
    grid = time_grid(PROC, 8)
    bad = int((grid < 0.3).nonzero()[0])  # the first grid point with t < 0.3
    t_bad = float(grid[bad])
    step = bad - ahead
    with pytest.raises(ValueError, match=rf"NaN.*step {step}\b|step {step}\b.*NaN") as info:
        sample(_nan_below(0.3, check_finite=check_finite), solver, grid, _x())
    assert f"{t_bad:.6f}"[:6] in str(info.value)  # the time is named


def test_nan_at_an_intermediate_point_names_the_step_and_its_time():
    """Singlestep DPM-Solver-2 evaluates at the lambda-midpoint of each step: a NaN there
    names the step and the intermediate time, not a grid time."""
    grid = time_grid(PROC, 4, final="t_min")
    lam = PROC.log_snr(grid)
    t_mid = float(PROC.t_of_log_snr((lam[1] + lam[2]) / 2))
    t_cut = (t_mid + float(grid[1])) / 2  # between grid[1] and the midpoint of step 1
    with pytest.raises(ValueError, match=r"step 1\b") as info:
        sample(_nan_below(t_cut), DPMSolver(order=2), grid, _x())
    assert f"{t_mid:.6f}"[:6] in str(info.value)


def test_nan_or_inf_in_x_init():
    x = _x()
    x[1, 0] = float("inf")
    with pytest.raises(ValueError, match="x_init contains NaN or infinite"):
        sample(MODEL, DDIM(), num_steps=3, x_init=x)


# ----------------------------------------------------------------------------- solver names


def test_unknown_solver_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown solver 'rk45'") as info:
        get_solver("rk45")
    for name in SOLVERS:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="unknown solver"):
        sample(MODEL, "dpm-solver-7", num_steps=3, x_init=_x())
    with pytest.raises(TypeError, match="solver must be a name or a Solver"):
        get_solver(3)
    with pytest.raises(TypeError, match="keyword arguments"):
        get_solver(DDIM(), eta=0.5)
    assert get_solver("DPMSolver_3") == DPMSolver(order=3)  # case and _ are normalised


def test_bad_solver_parameters():
    with pytest.raises(ValueError, match="order"):
        DPMSolver(order=4)
    with pytest.raises(ValueError, match="variant"):
        DPMSolverPP3M(variant="fast")
    with pytest.raises(ValueError, match="variant"):
        UniPC(p=2, variant="bh3")
    with pytest.raises(ValueError, match="eta"):
        DDPM(eta=1.5)
    with pytest.raises(ValueError, match="space"):
        Euler(space="sigma")
    with pytest.raises(TypeError, match="DiffusionModel"):
        sample(lambda x, t: x, DDIM(), num_steps=2, x_init=torch.zeros(2, 2))


# ----------------------------------------------------------------------------- x_init


def test_x_init_of_the_wrong_type():
    with pytest.raises(TypeError, match="x_init must be a floating tensor.*int64"):
        sample(MODEL, DDIM(), num_steps=3, x_init=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="x_init must be a floating tensor.*list"):
        sample(MODEL, DDIM(), num_steps=3, x_init=[[0.0, 0.0]])
    with pytest.raises(ValueError, match="non-empty"):
        sample(MODEL, DDIM(), num_steps=3, x_init=torch.zeros(0, 2, dtype=F64))


def test_x_init_shape_disagreeing_with_the_model_or_shape():
    with pytest.raises(ValueError, match=r"step 0.*shape"):
        sample(MODEL, DDIM(), num_steps=3, x_init=torch.zeros(3, 5, dtype=F64))
    with pytest.raises(ValueError, match=r"shape=\(4, 2\) disagrees with x_init.shape"):
        sample(MODEL, DDIM(), num_steps=3, x_init=_x(3), shape=(4, 2))
    with pytest.raises(ValueError, match="shape must be a non-empty tuple of positive"):
        sample(MODEL, DDIM(), num_steps=3, shape=(0, 2))
    with pytest.raises(TypeError, match="shape must be a tuple of ints"):
        sample(MODEL, DDIM(), num_steps=3, shape="3x2")


def test_x_init_dtype_and_device_mix():
    with pytest.raises(ValueError, match="dtype=torch.float32 disagrees with x_init.dtype"):
        sample(MODEL, DDIM(), num_steps=3, x_init=_x(), dtype=torch.float32)
    with pytest.raises(ValueError, match="device=meta disagrees with x_init.device"):
        sample(MODEL, DDIM(), num_steps=3, x_init=_x(), device="meta")
    with pytest.raises(TypeError, match="dtype must be a floating"):
        sample(MODEL, DDIM(), num_steps=3, shape=(3, 2), dtype=torch.int32)
    # consistent options are fine, and float32 runs in float32
    out = sample(MODEL, DDIM(), num_steps=3, x_init=_x().float(), dtype=torch.float32,
                 device="cpu", shape=(3, 2))
    assert out.x.dtype == torch.float32


class _Raw:
    """A model whose ``predict`` skips DiffusionModel's checks and converts its output."""

    process = PROC

    def __init__(self, convert):
        self.convert = convert

    def predict(self, x, t, kind):
        return self.convert(GAUSS.predict(x, t, PROC, kind))


def test_model_output_of_another_dtype_device_or_shape_names_the_step():
    with pytest.raises(TypeError, match=r"step 0 .*must match x: \(3, 2\) torch.float64 on "
                                        r"cpu; got \(3, 2\) torch.float32"):
        sample(_Raw(lambda out: out.float()), DDIM(), num_steps=3, x_init=_x())
    with pytest.raises(TypeError, match=r"step 0 .*must match x.*on meta"):
        sample(_Raw(lambda out: out.to("meta")), DDIM(), num_steps=3, x_init=_x())
    with pytest.raises(TypeError, match=r"step 0 .*must match x: \(3, 2\).*got \(3, 1\)"):
        sample(_Raw(lambda out: out[..., :1]), DDIM(), num_steps=3, x_init=_x())


def test_x_init_against_a_per_particle_grid_and_noise():
    grids = torch.stack([time_grid(PROC, 4), time_grid(PROC, 4, t_end=3e-3)], dim=-1)
    with pytest.raises(ValueError, match=r"tshape = \(2,\) to be a prefix of x_init.shape"):
        sample(MODEL, DDIM(), grids, _x(3))
    g = prepare_grid(PROC, grids)
    with pytest.raises(ValueError, match=r"prefix of x.shape = \(3, 2\)"):
        DDIM().transition(Evaluator(MODEL), _x(3), History(), 0, g)
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        DDIM().transition(Evaluator(MODEL), torch.zeros(2, 2, dtype=torch.int64), History(),
                          0, g)
    with pytest.raises(ValueError, match=r"FixedNoise.*shape"):
        sample(MODEL, DDPM(), num_steps=3, x_init=_x(3), noise=FixedNoise(torch.zeros(3, 4, 2)))
