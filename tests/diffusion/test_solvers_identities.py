"""Exact identities between solvers, processes, parametrizations and histories (note §6.3, §6.9).

All on an exact Gaussian target (``smcdiff.gaussian``) in float64, so agreement is to
round-off: relative tolerances 1e-10 or tighter unless stated.
"""

from __future__ import annotations

import pytest
import torch

from smcdiff.core.tree import take_particles
from smcdiff.diffusion.grids import time_grid
from smcdiff.diffusion.processes import (
    EDM,
    VE,
    VP,
    CosineVP,
    LinearInterpolant,
    TrigInterpolant,
)
from smcdiff.diffusion.sample import sample
from smcdiff.diffusion.solvers import (
    DDIM,
    DDPM,
    DEIS,
    IPNDM,
    DPMSolver,
    DPMSolverPP2M,
    DPMSolverPP2S,
    DPMSolverPP3M,
    Euler,
    EulerMaruyama,
    Evaluator,
    Heun,
    History,
    SDEDPMSolverPP1,
    SDEDPMSolverPP2M,
    UniPC,
    get_solver,
    prepare_grid,
    transition,
)
from smcdiff.gaussian.distributions import Gaussian

F64 = torch.float64
D_EIG = torch.tensor([0.01, 0.1, 1.0, 4.0], dtype=F64)
MU = torch.tensor([1.0, -0.5, 0.3, 2.0], dtype=F64)


def _gauss() -> Gaussian:
    gen = torch.Generator().manual_seed(3)
    U, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=F64))
    return Gaussian(MU, U @ torch.diag(D_EIG) @ U.T)


GAUSS = _gauss()


def _x_init(n: int, scale: float, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _traj(solver, proc=None, kind="eps", num_steps=12, final="zero", x=None, **kw):
    proc = proc or VP()
    x = _x_init(6, float(proc.sigma(proc.t_max))) if x is None else x
    return sample(GAUSS.model(proc, kind), solver, num_steps=num_steps, final=final, x_init=x,
                  return_trajectory=True, **kw).trajectory


# ----------------------------------------------------------------------------- first order

FIRST_ORDER = [
    DPMSolver(order=1), get_solver("dpmsolver++1"), UniPC(p=1, corrector=False),
    UniPC(p=1, variant="bh1", corrector=False), DEIS(order=1), Euler(space="rho"),
    IPNDM(max_order=1), DDPM(eta=0.0), SDEDPMSolverPP1(eta=0.0),
]


@pytest.mark.parametrize("solver", FIRST_ORDER, ids=repr)
def test_first_order_solvers_equal_ddim(solver):
    """DDIM = DPM-Solver-1 = DPM-Solver++1 = UniP-1 = DEIS-1 = Euler in rho (note §1)."""
    ref = _traj(DDIM())
    gen = torch.Generator().manual_seed(0)
    assert _rel(_traj(solver, generator=gen), ref) < 1e-12


def test_euler_in_t_equals_ddim_for_the_linear_interpolant():
    proc = LinearInterpolant()
    assert _rel(_traj(Euler(space="t"), proc), _traj(DDIM(), proc)) < 1e-12


# ----------------------------------------------------------------------------- multistep


@pytest.mark.parametrize(
    "a,b",
    [
        (UniPC(p=2, corrector=False), DPMSolverPP2M()),
        (UniPC(p=3, corrector=False), DPMSolverPP3M(variant="exact")),
        (SDEDPMSolverPP2M(eta=0.0), DPMSolverPP2M()),
        (SDEDPMSolverPP2M(eta=0.0, solver_type="heun"), DPMSolverPP2M(solver_type="heun")),
        (EulerMaruyama(eta=0.0), Euler(space="t")),
    ],
    ids=lambda s: repr(s),
)
def test_solver_pairs_coincide_step_by_step(a, b):
    """UniP-2 (bh2) = DPM-Solver++(2M); UniP-3 = DPM-Solver++(3M) with the 2*D2 fix (both
    integrate the quadratic interpolant of the last three D exactly, note §6.2); eta = 0 of
    the SDE samplers is their ODE solver."""
    gen = torch.Generator().manual_seed(0)
    assert _rel(_traj(a, num_steps=15, generator=gen), _traj(b, num_steps=15)) < 1e-11


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unip3_step_equals_dpmpp3m_exact_step_with_the_same_history(variant):
    """One third-order step from the same (x, history): B(h) cancels, so bh1 = bh2 = 3M."""
    proc = VP()
    model = GAUSS.model(proc, "x0")
    g = prepare_grid(proc, time_grid(proc, 10))
    x, hist = _x_init(4, 1.0), History()
    for i in range(4):
        x, hist = DPMSolverPP3M(variant="exact").transition(Evaluator(model), x, hist, i, g)[::2]
    a = DPMSolverPP3M(variant="exact").transition(Evaluator(model), x, hist, 4, g).mean
    b = UniPC(p=3, variant=variant, corrector=False).transition(Evaluator(model), x, hist, 4, g)
    assert _rel(b.mean, a) < 1e-12


def test_compat_3m_differs_from_unip3():
    assert _rel(_traj(DPMSolverPP3M(variant="compat")), _traj(UniPC(p=3, corrector=False))) > 1e-6


def _3m_steps(variant: str, grid: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """Each step of a DPM++3M ``variant`` run from the states and history of an "exact" run
    (so that steps can be compared one by one)."""
    g = prepare_grid(VP(), grid)
    model = GAUSS.model(VP(), "eps")
    ref, out = DPMSolverPP3M(variant="exact"), []
    hist = History()
    for i in range(g.num_steps):
        out.append(DPMSolverPP3M(variant=variant).transition(Evaluator(model), x, hist, i, g)
                   .mean)
        x, hist = ref.transition(Evaluator(model), x, hist, i, g)[::2]
    return out


def test_dpmpp3m_adaptive_term_follows_the_stencil_span():
    """"adaptive" takes each third-order step from "exact" (c = 2) while lambda_t -
    lambda_{s-2} <= EXACT_SPAN and from "compat" (c = 1) beyond; no step of a Karras grid is
    more than twice the previous one, so the order plan is the exact one."""
    from smcdiff.diffusion.solvers.dpm_solver import EXACT_SPAN

    proc = VP()
    grid = time_grid(proc, 24, kind="karras", final="t_min")
    lam = proc.log_snr(grid)
    g = prepare_grid(proc, grid)
    assert DPMSolverPP3M().plan(g) == DPMSolverPP3M(variant="exact").plan(g)
    x = _x_init(6, float(proc.sigma(grid[0])))
    ada, exact, compat = (_3m_steps(v, grid, x) for v in ("adaptive", "exact", "compat"))
    spans = [float(lam[i + 1] - lam[i - 2]) if i >= 2 else 0.0 for i in range(24)]
    assert min(spans[2:]) < EXACT_SPAN < max(spans)  # both kinds of steps occur
    for i in range(24):
        if i < 2 or spans[i] <= EXACT_SPAN:
            assert _rel(ada[i], exact[i]) < 1e-14, i
        else:
            assert _rel(ada[i], compat[i]) < 1e-14 and _rel(ada[i], exact[i]) > 1e-6, i


def test_dpmpp3m_adaptive_equals_exact_on_fine_grids():
    """On a logSNR grid of 40 steps to t_min (stencil 0.72 in lambda, equal steps) the
    adaptive default is the exact third-order method, step for step."""
    proc = VP()
    a = _traj(DPMSolverPP3M(), num_steps=40, final="t_min")
    b = _traj(DPMSolverPP3M(variant="exact"), num_steps=40, final="t_min")
    assert bool((a == b).all())
    assert 3 * float(proc.log_snr(time_grid(proc, 40, final="t_min")).diff()[0]) < 1.0


def test_dpmpp3m_adaptive_first_order_on_long_steps():
    """A step more than MAX_STEP_RATIO times the previous one (in lambda) is first order;
    such steps do not make a grid "too small" for the solver."""
    proc = VP()
    lam = -4.0 + torch.cumsum(0.1 * 1.9 ** torch.arange(7, dtype=F64), 0)  # ratio 1.9
    g = prepare_grid(proc, proc.t_of_log_snr(torch.cat([torch.tensor([-4.0], dtype=F64), lam])))
    assert DPMSolverPP3M(variant="exact").plan(g) == [1, 2, 3, 3, 3, 3, 3]
    assert DPMSolverPP3M().plan(g) == [1, 2, 3, 3, 3, 3, 3]
    lam = torch.tensor([-4.0, -3.9, -3.6, -2.7, 0.0, 3.0], dtype=F64)  # h triples, then less
    g = prepare_grid(proc, proc.t_of_log_snr(lam))
    assert DPMSolverPP3M().plan(g) == [1, 1, 1, 1, 3]
    res = sample(GAUSS.model(proc), DPMSolverPP3M(), g, _x_init(3, 1.0))
    assert res.orders == (1, 1, 1, 1, 3) and res.nfe == 5
    with pytest.raises(ValueError, match="never reaches order 3"):
        sample(GAUSS.model(proc), DPMSolverPP3M(), num_steps=2, final="t_min",
               x_init=_x_init(3, 1.0))


# ----------------------------------------------------------------------------- processes

EXPONENTIAL = [
    DDIM(), DPMSolver(order=2), DPMSolver(order=3), DPMSolver(order=2, solver_type="dpmsolver"),
    DPMSolver(order=3, solver_type="dpmsolver"), DPMSolver(order=3, orders=(3, 2, 1) * 4),
    DPMSolverPP2S(), DPMSolverPP2M(),
    DPMSolverPP3M(), DPMSolverPP3M(variant="compat"), UniPC(p=2), UniPC(p=2, variant="bh1"),
    UniPC(p=3), DEIS(order=2), DEIS(order=3), IPNDM(), Euler(space="rho"), Heun(space="rho"),
]


@pytest.mark.parametrize("solver", EXPONENTIAL, ids=repr)
def test_exponential_integrators_depend_only_on_lambda(solver):
    """On one lambda grid, x/alpha is the same for VP, VE, EDM, cosine, flow and trig
    processes (note §3: in (x/alpha, e^{-lambda}) coordinates the PF-ODE depends only on
    lambda), including the final denoise step to t = 0."""
    lam = torch.linspace(-3.5, 4.0, 13, dtype=F64)
    y0 = _x_init(6, 30.0, seed=1)
    outs = []
    for proc in (VP(), VE(), EDM(), CosineVP(), LinearInterpolant(), TrigInterpolant()):
        grid = torch.cat([proc.t_of_log_snr(lam).to(F64), torch.zeros(1, dtype=F64)])
        res = sample(GAUSS.model(proc, "eps"), solver, grid, y0 * proc.alpha(grid[0]))
        outs.append(res.x / proc.alpha(grid[-1]))
    for o in outs[1:]:
        assert _rel(o, outs[0]) < 1e-12


# ----------------------------------------------------------------------------- parametrizations

PARAM_SOLVERS = [
    DDIM(), Euler(), Heun(), DPMSolver(order=3), DPMSolverPP2S(), DPMSolverPP3M(), UniPC(p=3),
    DEIS(order=3), IPNDM(), EulerMaruyama(eta=0.5), SDEDPMSolverPP2M(),
]


@pytest.mark.parametrize("solver", PARAM_SOLVERS, ids=repr)
@pytest.mark.parametrize("proc", [VP(), LinearInterpolant()], ids=["vp", "flow"])
def test_parametrizations_give_the_same_trajectory(solver, proc):
    """eps, x0, v, score and velocity models of one exact Gaussian: same trajectory (the
    stochastic ones with the same noise)."""
    trajs = []
    for kind in ("eps", "x0", "v", "score", "velocity"):
        gen = torch.Generator().manual_seed(0)
        trajs.append(_traj(solver, proc, kind=kind, num_steps=10, generator=gen))
    for t in trajs[1:]:
        assert _rel(t, trajs[0]) < 1e-10


# ----------------------------------------------------------------------------- final step


@pytest.mark.parametrize("solver", EXPONENTIAL + [Euler(), Heun(), EulerMaruyama(), DDPM(),
                                                  SDEDPMSolverPP2M(), UniPC(p=1)], ids=repr)
def test_final_step_to_zero_is_the_exact_denoiser(solver):
    """Note §6.4: the step from t_min to t = 0 maps mode k by alpha d_k / v_k (the
    denoiser), not by the PF-ODE factor sqrt(d_k / v_k)."""
    proc = VP()
    tm = proc.t_min
    x = GAUSS.marginal(tm, proc).sample(5, generator=torch.Generator().manual_seed(2))
    tr = transition(GAUSS.model(proc, "eps"), solver, x, None, 0, torch.tensor([tm, 0.0]))
    a, s = proc.alpha(tm), proc.sigma(tm)
    cov = GAUSS.cov
    C = a**2 * cov + s**2 * torch.eye(4, dtype=F64)
    expected = MU + (x - a * MU) @ torch.linalg.solve(C, a * cov).T
    assert _rel(tr.mean, expected) < 1e-10  # eps -> x0 conversion round-off at sigma = 0.01
    assert float(tr.std.abs().max()) == 0.0


# ----------------------------------------------------------------------------- history

HISTORY_SOLVERS = [DPMSolverPP2M(), DPMSolverPP3M(), UniPC(p=3), UniPC(p=2, variant="bh1"),
                   DEIS(order=3), IPNDM(), DPMSolver(order=3), Heun()]


@pytest.mark.parametrize("solver", HISTORY_SOLVERS, ids=repr)
def test_resampling_with_history_equals_running_each_particle_alone(solver):
    """Note §6.9: gather (x, history) by ancestors mid-run with take_particles; each
    resulting particle then follows exactly the run of its ancestor alone."""
    proc = VP()
    model = GAUSS.model(proc, "x0")
    grid = prepare_grid(proc, time_grid(proc, 12, final="zero"))
    B, N = 2, 5
    x0 = _x_init(B * N, 1.0).reshape(B, N, 4)
    x, hist = x0, solver.init_history(x0)
    k = 6
    for i in range(k):
        x, hist = solver.transition(Evaluator(model), x, hist, i, grid)[::2]
    for leaf in (*hist.outputs, *hist.x_prev):
        assert leaf.shape == x.shape  # [*batch, N, *event]: gatherable
    anc = torch.tensor([[4, 4, 0, 2, 1], [3, 0, 0, 0, 2]])
    x, hist = take_particles((x, hist), anc)
    for i in range(k, grid.num_steps):
        x, hist = solver.transition(Evaluator(model), x, hist, i, grid)[::2]
    for b in range(B):
        for n in range(N):
            alone = sample(model, solver, grid.t, x0[b, anc[b, n]][None]).x[0]
            assert _rel(x[b, n], alone) < 1e-13


@pytest.mark.parametrize("solver", [DPMSolver(order=3), DPMSolverPP2S(), UniPC(p=3),
                                    DPMSolverPP3M(), DEIS(order=3), Heun(), DDIM()], ids=repr)
def test_per_particle_grids_equal_separate_runs(solver):
    """Per-particle times ``grid: [num_steps + 1, N]``: each particle follows its own grid."""
    proc = VP()
    model = GAUSS.model(proc, "eps")
    ends = [1e-3, 3e-3, 1e-2]
    grids = torch.stack([time_grid(proc, 9, t_end=e, final="zero") for e in ends], dim=-1)
    x0 = _x_init(3, 1.0, seed=5)
    out = sample(model, solver, grids, x0).x
    for n in range(3):
        alone = sample(model, solver, grids[:, n], x0[n][None]).x[0]
        assert _rel(out[n], alone) < 1e-12


def test_history_with_too_many_entries_is_rejected():
    proc = VP()
    g = prepare_grid(proc, time_grid(proc, 5))
    x = _x_init(3, 1.0)
    bad = History((x, x))
    with pytest.raises(ValueError, match="past outputs"):
        transition(GAUSS.model(proc), DPMSolverPP3M(), x, bad, 1, g)
