"""The general weighted SDE (smcdiff.fk.WeightedSDE): exact weight formula, bookkeeping, errors.

The deterministic check that the weight rate Gamma is exactly right is the Feynman-Kac PDE
identity (notes feynman-kac-correctors.md §2, §8.1): for the unnormalised
p~_t = prod_i q_t^i(x)^beta_i exp(rho_t(x)) of exact Gaussian experts and any zeta,

    d_tau log p~ + div u + u . grad log p~ - zeta^2 g^2/2 (Lap log p~ + |grad log p~|^2) = Gamma

pointwise, with u the proposal drift and d_tau = -d_t. Everything is differentiated by
autograd in float64 from closed-form log-densities written here (not from the package).
"""

from __future__ import annotations

import math

import pytest
import torch

import smcdiff as sd
from smcdiff.core.weights import DegenerateWeightsError
from smcdiff.diffusion import EDM, VE, VP, CosineVP, DiffusionModel, LinearInterpolant, time_grid
from smcdiff.fk import RewardTilt, WeightedSDE, anneal, cfg, product
from smcdiff.gaussian import Gaussian
from smcdiff.gaussian import targets as gt

F64 = torch.float64


def _gauss(mean, cov) -> Gaussian:
    return Gaussian(torch.tensor(mean, dtype=F64), torch.tensor(cov, dtype=F64))


G1 = _gauss([1.0, -0.5], [[1.0, 0.3], [0.3, 0.5]])
G2 = _gauss([-0.3, 0.8], [[0.7, -0.2], [-0.2, 0.9]])
G3 = _gauss([0.5, 0.5], [[0.4, 0.0], [0.0, 1.2]])


def _log_q(g: Gaussian, x: torch.Tensor, t: torch.Tensor, proc) -> torch.Tensor:
    """log N(x; alpha_t mu, alpha_t^2 Sigma + sigma_t^2 I), differentiable in x and t."""
    a, s = proc.alpha(t), proc.sigma(t)
    C = a**2 * g.cov + s**2 * torch.eye(g.dim, dtype=F64)
    return torch.distributions.MultivariateNormal(a * g.mean, C).log_prob(x)


def _pde_residual(model: WeightedSDE, gs, betas, x: torch.Tensor, t: float, log_tilt=None):
    """Residual of the FK PDE at points x [n, d], time t; also returns Gamma."""
    proc = model.process
    n, d = x.shape
    x = x.clone().requires_grad_(True)

    def ell(xx, tt):
        out = sum(b * _log_q(g, xx, tt, proc) for b, g in zip(betas, gs))
        return out if log_tilt is None else out + log_tilt(xx, tt)

    d_tau = []
    for i in range(n):  # d/dt per point (t enters every point)
        tt = torch.tensor(t, dtype=F64, requires_grad=True)
        (dt_i,) = torch.autograd.grad(ell(x[i : i + 1].detach(), tt).sum(), tt)
        d_tau.append(-dt_i)
    d_tau = torch.stack(d_tau)
    tt = torch.tensor(t, dtype=F64)
    (grad,) = torch.autograd.grad(ell(x, tt).sum(), x, create_graph=True)
    lap = sum(torch.autograd.grad(grad[:, j].sum(), x, retain_graph=True)[0][:, j]
              for j in range(d))
    u = model.drift(x, t)
    div_u = sum(torch.autograd.grad(u[:, j].sum(), x, retain_graph=True)[0][:, j]
                for j in range(d))
    G = model.rate(x, t)
    g2 = float(proc.diffusion_sq(torch.tensor(t, dtype=F64)))
    z2 = model.zeta**2
    res = d_tau + div_u + (u * grad).sum(-1) - 0.5 * z2 * g2 * (lap + (grad**2).sum(-1)) - G
    return res.detach(), G.detach()


PDE_CASES = [
    # (process, kinds, betas, zeta)
    (VP(), ("eps",), (2.0,), 1.0),                     # annealing, target-score SDE
    (VP(), ("x0",), (3.0,), 1 / math.sqrt(3.0)),       # annealing, tempered noise
    (VP(), ("score",), (0.5,), 0.3),
    (VP(), ("eps", "velocity"), (1.0, 1.0), 1.0),      # product of experts
    (VE(sigma_max=10.0), ("x0", "eps"), (1.5, 1.5), 0.7),
    (VP(), ("score", "eps"), (-1.0, 2.0), 1.0),         # CFG w = 2
    (CosineVP(), ("v", "x0", "eps"), (0.5, 1.0, 0.8), 0.0),  # three experts, ODE + weights
    (EDM(sigma_max=5.0), ("x0",), (2.5,), 1.0),
    (LinearInterpolant(), ("velocity", "eps"), (2.0, 0.5), 0.8),  # a flow
]


@pytest.mark.parametrize("case", range(len(PDE_CASES)))
def test_pde_identity_pointwise(case):
    proc, kinds, betas, zeta = PDE_CASES[case]
    gs = [G1, G2, G3][: len(betas)]
    with pytest.warns(UserWarning) if zeta == 0 else _no_warning():
        model = WeightedSDE([g.model(proc, k) for g, k in zip(gs, kinds)], betas, zeta=zeta,
                            event_shape=2)
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(case)) * 1.5
    for t in (0.93, 0.5, 0.12, 0.02):
        res, G = _pde_residual(model, gs, betas, x, t)
        assert res.abs().max() <= 1e-9 * (1 + G.abs().max()), (t, res)
        # The same identity without the divergence term (B - 1) d f fails whenever it is
        # non-zero: the check sees that term.
        B = sum(betas)
        div_f = 2 * float(proc.drift_coef(torch.tensor(t, dtype=F64)))
        if abs((B - 1) * div_f) > 1e-3:
            assert ((res + (B - 1) * div_f).abs() > 1e-4).all()


def test_pde_identity_with_reward_tilt():
    """p~_t = q_t^beta exp(lambda(t) r(x)) with a nonlinear reward: the Laplacian of r and
    |grad r|^2 cancel at drift factor zeta^2/2 on grad r (note §2(d))."""
    proc = VP()
    a = torch.tensor([0.7, -0.4], dtype=F64)
    c = torch.tensor([0.2, 0.1], dtype=F64)

    def reward(x):
        return torch.sin(x @ a) - 0.3 * ((x - c) ** 2).sum(-1)

    def schedule(t):
        return 1.5 * (1 - t) ** 2

    for betas, zeta in (((1.0,), 1.0), ((2.0,), 0.6)):
        tilt = RewardTilt(reward, schedule=schedule)
        model = WeightedSDE([G1.model(proc, "eps")], betas, zeta=zeta, event_shape=2, tilt=tilt)
        x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
        for t in (0.8, 0.3, 0.05):
            res, G = _pde_residual(model, [G1], betas, x, t,
                                   log_tilt=lambda xx, tt: schedule(tt) * reward(xx))
            assert res.abs().max() <= 1e-9 * (1 + G.abs().max()), (betas, zeta, t, res)


class _no_warning:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_rate_closed_form_general_event_shape():
    """Standard normal data in event shape (2, 3): VP keeps x_t ~ N(0, I), score -x, so
    Gamma = (beta-1) d f + g^2/2 beta(beta-1) |x|^2 with d = 6 (the divergence term counts
    every event entry); particles [*batch, N, 2, 3] run through the engine."""
    proc = VP()

    def net(x, t):  # eps prediction of N(0, I) data under VP: sigma_t x
        return proc.sigma(torch.as_tensor(t, dtype=x.dtype)).to(x.dtype) * x

    model = anneal(DiffusionModel(net, proc, "eps"), 2.0, event_shape=(2, 3), num_steps=20)
    x = torch.randn(3, 4, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = 0.37
    tt = torch.tensor(t, dtype=F64)
    f, g2 = float(proc.drift_coef(tt)), float(proc.diffusion_sq(tt))
    expected = 1.0 * 6 * f + 0.5 * g2 * 2.0 * 1.0 * (x**2).sum((-1, -2))
    torch.testing.assert_close(model.rate(x, t), expected, rtol=1e-12, atol=1e-12)
    out = sd.smc(model, 50, batch_shape=(3,), generator=torch.Generator().manual_seed(1))
    assert out.particles.shape == (3, 50, 2, 3)
    assert out.log_w.shape == (3, 50) and out.log_z.shape == (3,)


def test_one_expert_evaluation_per_step_and_nfe():
    proc = VP()
    m1, m2 = G1.model(proc, "eps"), G2.model(proc, "x0")
    model = product([m1, m2], event_shape=2, num_steps=12)
    out = sd.smc(model, 64, batch_shape=(2,), generator=torch.Generator().manual_seed(0))
    assert model.T == 13
    assert out.nfe == 2 * 12
    assert out.total_nfe == 2 * 12 * 64 * 2
    # log_G reused the scores of M: each expert ran exactly once per move.
    assert m1.nfe == 12 and m2.nfe == 12
    # Called on another x_prev, log_G re-evaluates and gives the same potential.
    x_prev = out.particles
    x = model.M(5, x_prev, torch.Generator().manual_seed(2))
    cached = model.log_G(5, x_prev, x)
    again = model.log_G(5, x_prev.clone(), x)
    torch.testing.assert_close(cached, again, rtol=0, atol=0)
    assert m1.nfe == 14


def test_float32_particles_accumulate_in_float64():
    proc = VP()
    g32 = Gaussian(G1.mean.float(), G1.cov.float())
    model = anneal(g32.model(proc), 2.0, event_shape=2, num_steps=10, dtype=torch.float32)
    out = sd.smc(model, 100, generator=torch.Generator().manual_seed(0))
    assert out.particles.dtype == torch.float32
    assert out.log_w.dtype == F64 and out.log_z.dtype == F64


def _nan_net(threshold: float):
    def net(x, t):
        t = float(t)
        out = -x if t >= threshold else torch.full_like(x, float("nan"))
        return out
    return net


def test_nan_expert_output_raises_naming_the_step():
    proc = VP()
    grid = time_grid(proc, 10, kind="uniform", final="t_min")
    # First SMC step whose pre-step time grid[n-1] is below 0.5.
    step = 1 + next(i for i, t in enumerate(grid.tolist()) if t < 0.5)
    # The wrapper lets NaN through: the log-potential is NaN, never zeroed, and the engine
    # raises at that step.
    quiet = DiffusionModel(_nan_net(0.5), proc, "score", check_finite=False)
    model = anneal(quiet, 2.0, event_shape=1, grid=grid)
    with pytest.raises(DegenerateWeightsError, match=f"step {step}"):
        sd.smc(model, 32, generator=torch.Generator().manual_seed(0))
    # The checking wrapper raises ValueError, re-raised with the SMC step and time.
    loud = DiffusionModel(_nan_net(0.5), proc, "score")
    model = anneal(loud, 2.0, event_shape=1, grid=grid)
    with pytest.raises(ValueError, match=f"SMC step {step} "):
        sd.smc(model, 32, generator=torch.Generator().manual_seed(0))
    # The NaN reaches log_G directly as well (no silent zero).
    lg = anneal(quiet, 2.0, event_shape=1, grid=grid).log_G(
        step, torch.zeros(4, 1, dtype=F64), torch.zeros(4, 1, dtype=F64))
    assert torch.isnan(lg).all()


def test_zeta_variants_and_warning():
    proc = VP()
    m = G1.model(proc)
    assert anneal(m, 4.0, event_shape=2).zeta == 1.0
    assert anneal(m, 4.0, zeta="target", event_shape=2).zeta == 1.0
    assert anneal(m, 4.0, zeta="tempered", event_shape=2).zeta == pytest.approx(0.5)
    assert product([m, m], 2.0, zeta="tempered", event_shape=2).zeta == pytest.approx(0.5)
    assert cfg(m, m, 3.0, zeta="tempered", event_shape=2).zeta == 1.0
    with pytest.warns(UserWarning, match="zeta = 0"):
        anneal(m, 2.0, zeta=0.0, event_shape=2)


def test_bad_input_raises():
    vp, ve = VP(), VE()
    with pytest.raises(ValueError, match="differs"):
        product([G1.model(vp), G2.model(ve)], event_shape=2)
    with pytest.raises(ValueError, match="B = sum"):
        WeightedSDE([G1.model(vp), G2.model(vp)], [1.0, -1.0], event_shape=2)
    with pytest.raises(ValueError, match="expected 2 exponents"):
        WeightedSDE([G1.model(vp), G2.model(vp)], [1.0], event_shape=2)
    with pytest.raises(ValueError, match="event_shape"):
        anneal(G1.model(vp), 2.0)
    with pytest.raises(ValueError, match="beta"):
        anneal(G1.model(vp), -1.0, event_shape=2)
    with pytest.raises(ValueError, match="zeta"):
        anneal(G1.model(vp), 2.0, zeta=-1.0, event_shape=2)
    with pytest.raises(TypeError, match="experts"):
        WeightedSDE([object()], [1.0], event_shape=2)
    with pytest.raises(ValueError, match="not finite"):  # alpha(1) = 0 for interpolants
        anneal(G1.model("linear"), 2.0, event_shape=2, grid=[1.0, 0.5, 0.0])
    bad_tilt = RewardTilt(lambda x: x.sum(-1, keepdim=True), grad=torch.ones_like)
    with pytest.raises(ValueError, match="tilt returned"):  # reward [*batch, N, 1], d = 1
        WeightedSDE([_gauss([0.0], [[1.0]]).model(vp)], [1.0], event_shape=1,
                    tilt=bad_tilt).rate(
            torch.zeros(3, 1, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="init returned"):
        anneal(G1.model(vp), 2.0, event_shape=3, init=G1, num_steps=3).M0(
            4, torch.Size(), None)


def test_resampling_window():
    """model.window() resamples only while the particles sit in [t_to, t_from]."""
    model = anneal(G1.model(VP()), 2.0, event_shape=2, num_steps=20)
    trig = model.window("always", t_from=0.9, t_to=0.4)
    out = sd.smc(model, 64, resample=trig, generator=torch.Generator().manual_seed(0))
    pre = model.grid[:-1]  # resampling before step n happens at grid[n-1]
    expected = torch.cat([torch.zeros(1, dtype=torch.bool), (pre >= 0.4) & (pre <= 0.9)])
    assert torch.equal(out.resampled, expected)
    assert 0 < int(expected.sum()) < 20


def test_stabilisers_are_opt_in():
    class LogG:
        name = "lg"

        def __call__(self, state, info):
            return info.log_G

    base = dict(event_shape=2, num_steps=15)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    m = G1.model(VP())
    plain = sd.smc(anneal(m, 3.0, **base), 200, collectors=[LogG()], generator=gen())
    lg = plain.collected["lg"][1:]
    assert lg.abs().max() > 0.3 and lg.mean(-1).abs().max() > 1e-3  # neither clamped nor centred
    clamped = sd.smc(anneal(m, 3.0, clamp=0.3, **base), 200, collectors=[LogG()],
                     generator=gen())
    assert clamped.collected["lg"].abs().max() <= 0.3
    centred = sd.smc(anneal(m, 3.0, center=True, **base), 200, collectors=[LogG()],
                     generator=gen())
    clg = centred.collected["lg"][1:]
    assert clg.mean(-1).abs().max() < 1e-12 * (1 + clg.abs().max()) * clg.shape[-1]


def test_prior_init_and_its_log_normaliser():
    """init="prior" draws N(0, sigma_0^2 I / B); prior_log_z is the exact log-normaliser of
    prod_i N(0, sigma_0^2 I)^beta_i."""
    proc = VP()
    model = product([G1.model(proc), G2.model(proc)], [1.0, 0.5], event_shape=2, num_steps=5)
    s0 = float(proc.sigma(torch.tensor(model.grid[0].item(), dtype=F64)))
    n0 = Gaussian(torch.zeros(2, dtype=F64), s0**2 * torch.eye(2, dtype=F64))
    exact = gt.geometric([n0, n0], [1.0, 0.5])
    assert model.prior_log_z() == pytest.approx(float(exact.log_z), abs=1e-12)
    x = model.M0(20000, torch.Size(), torch.Generator().manual_seed(0))
    var = x.var(0)  # each coordinate ~ N(0, s0^2 / 1.5); SE of a variance ~ var sqrt(2/n)
    v = s0**2 / 1.5
    assert ((var - v).abs() < 4 * v * math.sqrt(2 / 20000)).all()
