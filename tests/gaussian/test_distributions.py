"""Exact Gaussian / Gaussian-mixture data under noising processes: closed-form truth."""

import math

import pytest
import torch
from helpers import gen

from smcdiff.diffusion.parametrization import KINDS, DiffusionModel, convert
from smcdiff.diffusion.processes import (
    EDM,
    VE,
    VP,
    CosineVP,
    LinearInterpolant,
    TrigInterpolant,
)
from smcdiff.gaussian import Gaussian, GaussianMixture, MixtureKernel

F64 = torch.float64
PROCESSES = [VP(), CosineVP(), VE(), EDM(), LinearInterpolant(), TrigInterpolant()]
PIDS = [type(p).__name__ for p in PROCESSES]


def gauss2() -> Gaussian:
    return Gaussian(torch.tensor([1.0, -2.0], dtype=F64),
                    torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=F64))


def gmm2() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([0.2, 0.5, 0.3], dtype=F64),
        torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], dtype=F64),
        torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.3, -0.1], [-0.1, 0.6]],
                      [[1.0, 0.0], [0.0, 0.1]]], dtype=F64),
    )


def gmm1d() -> GaussianMixture:
    return GaussianMixture(torch.tensor([0.3, 0.5, 0.2], dtype=F64),
                           torch.tensor([[-2.0], [0.5], [3.0]], dtype=F64),
                           torch.tensor([[[0.3]], [[0.5]], [[0.2]]], dtype=F64))


LAWS = {"gauss": gauss2, "gmm": gmm2}


def assert_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, n_se: float = 4.0):
    """Sample mean and covariance of x [n, d] within n_se empirical standard errors."""
    n = x.shape[0]
    m = x.mean(0)
    se_m = x.std(0) / math.sqrt(n)
    assert torch.all((m - mean).abs() <= n_se * se_m), (m, mean, se_m)
    xc = x - mean
    prod = xc.unsqueeze(-1) * xc.unsqueeze(-2)  # centred at the true mean
    c = prod.mean(0)
    se_c = prod.std(0) / math.sqrt(n)
    assert torch.all((c - cov).abs() <= n_se * se_c), (c, cov, se_c)


def forward_noise(law, t, proc, n, seed):
    g = gen(seed)
    x0 = law.sample(n, g)
    eps = torch.randn(x0.shape, generator=g, dtype=F64)
    return x0, eps, proc.alpha(t) * x0 + proc.sigma(t) * eps


# --------------------------------------------------------------------------- scores


@pytest.mark.parametrize("proc", PROCESSES, ids=PIDS)
@pytest.mark.parametrize("law", ["gauss", "gmm"])
def test_score_equals_autograd_of_marginal_log_prob(proc, law):
    dist = LAWS[law]()
    x = 2.0 * torch.randn(4, 7, 2, generator=gen(0), dtype=F64)
    for t in (0.0, 0.3, 1.0, torch.rand(4, 7, generator=gen(1), dtype=F64)):
        xx = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(dist.marginal_log_prob(xx, t, proc).sum(), xx)
        torch.testing.assert_close(dist.score(x, t, proc), grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("law", ["gauss", "gmm"])
def test_marginal_log_prob_is_the_noised_law(law):
    dist = LAWS[law]()
    x = 2.0 * torch.randn(50, 2, generator=gen(2), dtype=F64)
    proc = VP()
    for t in (0.0, 0.2, 0.7):
        torch.testing.assert_close(dist.marginal_log_prob(x, t, proc),
                                   dist.marginal(t, proc).log_prob(x))
    # and the data law is an explicit mixture of MultivariateNormal densities
    comps = torch.distributions.MultivariateNormal(dist._means, dist._covs)
    lp = torch.logsumexp(dist._log_w + comps.log_prob(x.unsqueeze(-2)), -1)
    torch.testing.assert_close(dist.log_prob(x), lp)
    torch.testing.assert_close(dist.marginal_log_prob(x, 0.0, proc), lp)


def test_marginal_density_integrates_to_one_with_exact_moments():
    dist, proc, t = gmm2(), VP(), 0.25
    a, s = proc.alpha(t), proc.sigma(t)
    h = 0.02
    g1 = torch.arange(-9.0, 9.0, h, dtype=F64)
    X, Y = torch.meshgrid(g1, g1, indexing="ij")
    pts = torch.stack([X, Y], -1).reshape(-1, 2)
    w = dist.marginal_log_prob(pts, t, proc).exp() * h * h
    assert w.sum().item() == pytest.approx(1.0, abs=1e-9)
    mean = (w.unsqueeze(-1) * pts).sum(0)
    cov = (w[:, None, None] * torch.einsum("ni,nj->nij", pts - mean, pts - mean)).sum(0)
    torch.testing.assert_close(mean, a * dist.mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(cov, a**2 * dist.cov + s**2 * torch.eye(2, dtype=F64),
                               atol=1e-8, rtol=0)


@pytest.mark.parametrize("law", ["gauss", "gmm"])
def test_forward_noised_samples_match_marginal_moments(law):
    dist, proc, t = LAWS[law](), EDM(), 0.02
    _, _, xt = forward_noise(dist, t, proc, 20000, 3)
    m = dist.marginal(t, proc)
    assert_moments(xt, m.mean, m.cov)


# --------------------------------------------------------------------------- denoiser / eps


@pytest.mark.parametrize("proc", [VP(), EDM(), LinearInterpolant()], ids=["VP", "EDM", "Linear"])
@pytest.mark.parametrize("law", ["gauss", "gmm"])
def test_denoiser_and_eps_are_conditional_expectations(proc, law):
    """E[(x0 - D(x_t)) h(x_t)] = 0 and E[(eps - eps_hat(x_t)) h(x_t)] = 0 for h = 1, x_t;
    Stein: E[score(x_t) x_t^T] = -I. Monte Carlo within 4 standard errors."""
    dist = LAWS[law]()
    t = 0.4 if not isinstance(proc, EDM) else 0.015
    x0, eps, xt = forward_noise(dist, t, proc, 20000, 4)
    for target, pred in ((x0, dist.x0(xt, t, proc)), (eps, dist.eps(xt, t, proc))):
        r = target - pred
        for h in (torch.ones_like(xt[:, :1]), xt[:, :1], xt[:, 1:]):
            f = r * h
            se = f.std(0) / math.sqrt(f.shape[0])
            assert torch.all(f.mean(0).abs() <= 4 * se), (f.mean(0), se)
    f = torch.einsum("ni,nj->nij", dist.score(xt, t, proc), xt).reshape(xt.shape[0], -1)
    se = f.std(0) / math.sqrt(f.shape[0])
    assert torch.all((f.mean(0) + torch.eye(2, dtype=F64).reshape(-1)).abs() <= 4 * se)


@pytest.mark.parametrize("proc", PROCESSES, ids=PIDS)
@pytest.mark.parametrize("law", ["gauss", "gmm"])
def test_predictions_agree_with_parametrization_conversions(proc, law):
    dist = LAWS[law]()
    x = 2.0 * torch.randn(3, 5, 2, generator=gen(5), dtype=F64)
    for t in (0.3, 0.8, torch.rand(3, 5, generator=gen(6), dtype=F64) * 0.9 + 0.05):
        preds = {k: dist.predict(x, t, proc, k) for k in KINDS}
        torch.testing.assert_close(preds["score"], -preds["eps"] / _pad(proc.sigma(t), x))
        for fk in KINDS:
            for tk in KINDS:
                torch.testing.assert_close(convert(preds[fk], fk, tk, x, t, proc), preds[tk],
                                           rtol=1e-9, atol=1e-9)


def _pad(c, x):
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


@pytest.mark.parametrize("kind", KINDS)
def test_exact_model_of_any_kind(kind):
    dist, proc = gmm2(), VP()
    model = dist.model(proc, kind)
    assert isinstance(model, DiffusionModel) and model.kind == kind
    x = torch.randn(6, 2, generator=gen(7), dtype=F64)
    t = torch.linspace(0.1, 0.9, 6, dtype=F64)
    for k in KINDS:
        torch.testing.assert_close(model.predict(x, t, k), dist.predict(x, t, proc, k),
                                   rtol=1e-9, atol=1e-10)
    assert model.nfe == len(KINDS)
    with pytest.raises(TypeError, match="conditioning"):
        model(x, t, label=1)
    assert dist.model("vp", kind).process == VP()


@pytest.mark.parametrize("proc", PROCESSES, ids=PIDS)
def test_velocity_is_the_probability_flow_drift(proc):
    """dx/dt = f(t) x - g(t)^2 / 2 * score (Song et al. 2021), independent of alpha', sigma'."""
    dist = gmm2()
    x = 2.0 * torch.randn(10, 2, generator=gen(8), dtype=F64)
    for t in (0.2, 0.6, 0.9):
        f, g2 = proc.drift_coef(t), proc.diffusion_sq(t)
        torch.testing.assert_close(dist.velocity(x, t, proc),
                                   f * x - 0.5 * g2 * dist.score(x, t, proc), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- t = 0, t = 1


@pytest.mark.parametrize("proc", PROCESSES, ids=PIDS)
@pytest.mark.parametrize("law", ["gauss", "gmm"])
def test_stable_at_both_ends(proc, law):
    dist = LAWS[law]()
    x = 2.0 * torch.randn(8, 2, generator=gen(9), dtype=F64)
    # t = 0: the data law, identity denoiser, zero noise, finite velocity (= f x - g^2/2 s).
    torch.testing.assert_close(dist.x0(x, 0.0, proc), x, rtol=0, atol=1e-14)
    assert torch.all(dist.eps(x, 0.0, proc) == 0)
    torch.testing.assert_close(dist.marginal_log_prob(x, 0.0, proc), dist.log_prob(x))
    vel = dist.velocity(x, 0.0, proc)
    assert torch.isfinite(vel).all()
    if not isinstance(proc, VE):  # VE jumps from sigma_min to 0 at t = 0
        score = dist.score(x, 0.0, proc)
        expected = proc.drift_coef(0.0) * x - 0.5 * proc.diffusion_sq(0.0) * score
        torch.testing.assert_close(vel, expected, rtol=1e-10, atol=1e-12)
    # t = 1: everything finite; where alpha = 0 the denoiser is the data mean.
    for k in KINDS:
        assert torch.isfinite(dist.predict(x, 1.0, proc, k)).all(), k
    assert torch.isfinite(dist.marginal_log_prob(x, 1.0, proc)).all()
    if float(proc.alpha(1.0)) == 0.0:
        torch.testing.assert_close(dist.x0(x, 1.0, proc), dist.mean.expand_as(x))


def test_singular_covariance_keeps_denoiser_and_flow_finite():
    g = Gaussian(torch.zeros(2, dtype=F64), torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64))
    x = torch.randn(5, 2, generator=gen(10), dtype=F64)
    proc = VP()
    torch.testing.assert_close(g.x0(x, 0.0, proc), x, rtol=0, atol=1e-15)
    assert torch.isfinite(g.velocity(x, 0.5, proc)).all()
    x1 = g.marginal(1.0, proc).sample(100, gen(11))
    x_data = g.pf_ode_solution(x1, 1.0, 0.0, proc)
    assert x_data[:, 1].abs().max() < 1e-12  # lands on the support
    assert torch.isfinite(g.sample(4, gen(12))).all()
    mean, cov = g.reverse_kernel(x1, 1.0, 0.0, proc)
    assert torch.isfinite(mean).all() and torch.isfinite(cov).all()


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("law", ["gauss", "gmm"])
def test_sample_moments_and_reproducibility(law):
    dist = LAWS[law]()
    x = dist.sample(20000, gen(13))
    assert x.shape == (20000, 2) and x.dtype == F64
    assert_moments(x, dist.mean, dist.cov)
    torch.testing.assert_close(dist.sample((3, 4), gen(14)), dist.sample((3, 4), gen(14)))
    assert dist.sample((3, 4), gen(14)).shape == (3, 4, 2)
    assert not torch.equal(dist.sample(5, gen(1)), dist.sample(5, gen(2)))


def test_gmm_sample_component_masses():
    dist = gmm1d()  # well separated: component = nearest mean
    x = dist.sample(30000, gen(15))
    frac = torch.stack([(x[:, 0] < -0.75).double().mean(),
                        ((x[:, 0] >= -0.75) & (x[:, 0] < 1.75)).double().mean(),
                        (x[:, 0] >= 1.75).double().mean()])
    p = dist.weights  # masses of the three windows, up to tiny overlaps computed exactly
    edges = torch.tensor([-math.inf, -0.75, 1.75, math.inf], dtype=F64)
    sd = dist.covs[:, 0, 0].sqrt()
    cdf = torch.special.ndtr((edges[None, :] - dist.means) / sd[:, None])  # [K, 4]
    masses = (p[:, None] * (cdf[:, 1:] - cdf[:, :-1])).sum(0)
    se = (masses * (1 - masses) / x.shape[0]).sqrt()
    assert torch.all((frac - masses).abs() <= 4 * se)


def test_from_samples_uses_sample_mean_and_covariance():
    x = torch.randn(200, 3, generator=gen(16), dtype=F64) @ torch.randn(3, 3, generator=gen(17),
                                                                        dtype=F64)
    g = Gaussian.from_samples(x)
    torch.testing.assert_close(g.mean, x.mean(0))
    torch.testing.assert_close(g.cov, torch.cov(x.T))
    torch.testing.assert_close(Gaussian.from_samples(x, correction=0).cov,
                               torch.cov(x.T, correction=0))


# --------------------------------------------------------------------------- PF-ODE solution


@pytest.mark.parametrize("proc", PROCESSES, ids=PIDS)
def test_pf_ode_solution_composes_and_solves_the_ode(proc):
    g = gauss2()
    x = 3.0 * torch.randn(6, 2, generator=gen(18), dtype=F64)
    s, u, t = 0.9, 0.55, 0.2
    direct = g.pf_ode_solution(x, s, t, proc)
    torch.testing.assert_close(g.pf_ode_solution(g.pf_ode_solution(x, s, u, proc), u, t, proc),
                               direct, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g.pf_ode_solution(x, s, s, proc), x, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(g.pf_ode_solution(direct, t, s, proc), x, rtol=1e-11, atol=1e-11)
    # d/dt of the solution equals the exact velocity (central differences, O(h^2)).
    h = 1e-5
    for tt in (0.3, 0.7):
        up, down = g.pf_ode_solution(x, s, tt + h, proc), g.pf_ode_solution(x, s, tt - h, proc)
        d = (up - down) / (2 * h)
        xt = g.pf_ode_solution(x, s, tt, proc)
        torch.testing.assert_close(d, g.velocity(xt, tt, proc), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("proc", [VP(), EDM(), LinearInterpolant()], ids=["VP", "EDM", "Linear"])
def test_pf_ode_solution_pushes_p_s_to_p_t(proc):
    g = gauss2()
    s, t = 1.0, 0.0
    # The map is affine x -> c + M x: its pushforward of p_s is exactly p_t.
    ps, pt = g.marginal(s, proc), g.marginal(t, proc)
    c = g.pf_ode_solution(torch.zeros(1, 2, dtype=F64), s, t, proc)[0]
    M = (g.pf_ode_solution(torch.eye(2, dtype=F64), s, t, proc) - c).T
    torch.testing.assert_close(c + M @ ps.mean, pt.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(M @ ps.cov @ M.T, pt.cov, rtol=1e-10, atol=1e-12)
    # and by Monte Carlo, from exact p_s samples (also per-particle end times).
    xs = ps.sample(20000, gen(19))
    assert_moments(g.pf_ode_solution(xs, s, t, proc), pt.mean, pt.cov)
    tt = torch.full((20000,), 0.35, dtype=F64)
    p35 = g.marginal(0.35, proc)
    assert_moments(g.pf_ode_solution(xs, s, tt, proc), p35.mean, p35.cov)


def test_pf_ode_solution_depends_on_log_snr_only():
    """In (x / alpha, e^{-lambda}) coordinates VP, VE, flow solutions coincide (solvers.md 3)."""
    g = gauss2()
    lam_s, lam_t = -1.5, 2.0
    x_tilde = 2.0 * torch.randn(5, 2, generator=gen(20), dtype=F64)  # x_s / alpha_s
    outs = []
    for proc in (VP(), VE(sigma_min=0.01, sigma_max=50.0), LinearInterpolant(), TrigInterpolant()):
        s, t = proc.t_of_log_snr(lam_s), proc.t_of_log_snr(lam_t)
        xs = proc.alpha(s) * x_tilde
        outs.append(g.pf_ode_solution(xs, s, t, proc) / proc.alpha(t))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- reverse kernels


@pytest.mark.parametrize("proc", [VP(), EDM(), LinearInterpolant()], ids=["VP", "EDM", "Linear"])
def test_gaussian_reverse_kernel_is_exact(proc):
    g = gauss2()
    t, u = 0.8, 0.3
    pt, pu = g.marginal(t, proc), g.marginal(u, proc)
    # Deterministic: E[mean(x_t)] = alpha_u mu and Cov(mean(x_t)) + S = C_u.
    c, S = g.reverse_kernel(torch.zeros(1, 2, dtype=F64), t, u, proc)
    c = c[0]
    M = (g.reverse_kernel(torch.eye(2, dtype=F64), t, u, proc)[0] - c).T
    assert S.shape == (2, 2)
    torch.testing.assert_close(c + M @ pt.mean, pu.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(M @ pt.cov @ M.T + S, pu.cov, rtol=1e-10, atol=1e-12)
    # Bayes by hand: S = (C_u^-1 + a^2/tau^2 I)^-1, mean = S (C_u^-1 alpha_u mu + a x_t/tau^2).
    a = proc.alpha(t) / proc.alpha(u)
    tau2 = proc.sigma(t) ** 2 - a**2 * proc.sigma(u) ** 2
    Cu_inv = torch.linalg.inv(pu.cov)
    S_ref = torch.linalg.inv(Cu_inv + a**2 / tau2 * torch.eye(2, dtype=F64))
    xt = pt.sample(7, gen(21))
    mean, S2 = g.reverse_kernel(xt, t, u, proc)
    ref = (S_ref @ ((Cu_inv @ pu.mean)[:, None] + a * xt.T / tau2)).T
    torch.testing.assert_close(S2, S_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mean, ref, rtol=1e-10, atol=1e-10)
    xu = g.sample_reverse(xt, t, u, proc, gen(22))
    torch.testing.assert_close(g.reverse_log_prob(xu, xt, t, u, proc),
                               torch.distributions.MultivariateNormal(mean, S2).log_prob(xu))
    # Monte Carlo: one exact step from exact p_t samples gives exact p_u moments.
    xt = pt.sample(20000, gen(23))
    assert_moments(g.sample_reverse(xt, t, u, proc, gen(24)), pu.mean, pu.cov)
    # all the way to data in one step
    assert_moments(g.sample_reverse(xt, t, 0.0, proc, gen(25)), g.mean, g.cov)


def test_reverse_kernel_per_particle_times():
    g, proc = gauss2(), VP()
    xt = torch.randn(3, 4, 2, generator=gen(26), dtype=F64)
    t = torch.tensor([0.9, 0.6, 0.5], dtype=F64)
    u = t - 0.2
    mean, cov = g.reverse_kernel(xt, t, u, proc)
    assert mean.shape == (3, 4, 2) and cov.shape == (3, 1, 2, 2)
    for i in range(3):
        mi, ci = g.reverse_kernel(xt[i], float(t[i]), float(u[i]), proc)
        torch.testing.assert_close(mean[i], mi)
        torch.testing.assert_close(cov[i, 0], ci)
    k = gmm2().reverse_kernel(xt, t, u, proc)
    assert k.covs.shape == (3, 1, 3, 2, 2) and k.means.shape == (3, 4, 3, 2)


@pytest.mark.parametrize("proc", [VP(), EDM(), LinearInterpolant()], ids=["VP", "EDM", "Linear"])
def test_gmm_reverse_kernel_matches_bayes_on_a_grid(proc):
    """p(x_u | x_t) ∝ p_u(x_u) N(x_t; a x_u, tau^2): brute force on a 1-D grid."""
    dist = gmm1d()
    t, u = (0.6, 0.25) if not isinstance(proc, EDM) else (0.03, 0.01)
    a = proc.alpha(t) / proc.alpha(u)
    tau2 = proc.sigma(t) ** 2 - a**2 * proc.sigma(u) ** 2
    xt = torch.tensor([[-1.7], [0.2], [1.1], [2.6]], dtype=F64)
    h = 1e-3
    grid = torch.arange(-8.0, 8.0, h, dtype=F64)
    log_post = dist.marginal_log_prob(grid[:, None], u, proc)[None, :] \
        - 0.5 * (xt - a * grid[None, :]) ** 2 / tau2  # [4, G]
    post = torch.softmax(log_post, -1) / h
    kern = dist.reverse_log_prob(grid[None, :, None].expand(4, -1, 1),
                                 xt[:, None, :].expand(-1, grid.shape[0], -1), t, u, proc)
    torch.testing.assert_close(kern.exp(), post, rtol=1e-7, atol=1e-9)
    k = dist.reverse_kernel(xt, t, u, proc)
    assert isinstance(k, MixtureKernel)
    torch.testing.assert_close(k.weights.sum(-1), torch.ones(4, dtype=F64))
    km = (k.weights[..., None] * k.means).sum(-2)[:, 0]
    torch.testing.assert_close(km, (post * grid).sum(-1) * h, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("proc", [VP(), LinearInterpolant()], ids=["VP", "Linear"])
def test_gmm_reverse_sampling_gives_exact_p_u_moments(proc):
    dist = gmm2()
    t, u = 0.7, 0.2
    _, _, xt = forward_noise(dist, t, proc, 20000, 27)
    pu = dist.marginal(u, proc)
    assert_moments(dist.sample_reverse(xt, t, u, proc, gen(28)), pu.mean, pu.cov)
    assert_moments(dist.sample_reverse(xt, t, 0.0, proc, gen(29)), dist.mean, dist.cov)
    # the log-density of the kernel is the mixture of its Gaussian parts
    k = dist.reverse_kernel(xt[:5], t, u, proc)
    xu = dist.sample_reverse(xt[:5], t, u, proc, gen(30))
    comp = torch.distributions.MultivariateNormal(k.means, k.covs)
    torch.testing.assert_close(dist.reverse_log_prob(xu, xt[:5], t, u, proc),
                               torch.logsumexp(k.log_weights + comp.log_prob(xu[:, None]), -1))


# --------------------------------------------------------------------------- dtype, errors


@pytest.mark.parametrize("law", ["gauss", "gmm"])
def test_float32_inputs_follow_and_match_float64(law):
    dist = LAWS[law]()
    proc = VP()
    x64 = torch.randn(20, 2, generator=gen(31), dtype=F64)
    x32 = x64.float()
    t = torch.rand(20, generator=gen(32), dtype=F64) * 0.9 + 0.05
    for k in KINDS:
        out = dist.predict(x32, t.float(), proc, k)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), dist.predict(x64, t, proc, k),
                                   rtol=1e-4, atol=1e-4)
    assert dist.marginal_log_prob(x32, 0.5, proc).dtype == torch.float32
    d32 = (Gaussian(dist.mean.float(), dist.cov.float()) if law == "gauss"
           else GaussianMixture(dist.weights.float(), dist.means.float(), dist.covs.float()))
    assert d32.sample(3, gen(0)).dtype == torch.float32


def test_bad_input_raises_clear_errors():
    g = gauss2()
    with pytest.raises(ValueError, match="cov"):
        Gaussian(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive semi-definite"):
        Gaussian(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="cov"):
        Gaussian(torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="mean"):
        Gaussian(torch.zeros(2, 2), torch.eye(2))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.tensor([0.5, -0.5]), torch.zeros(2, 1), torch.ones(2, 1, 1))
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.tensor([0.5, 0.5]), torch.zeros(3, 1), torch.ones(2, 1, 1))
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="x"):
        g.score(torch.zeros(4, 3, dtype=F64), 0.5, VP())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        g.score(x, 1.5, VP())
    with pytest.raises(ValueError, match="prefix"):
        g.score(x, torch.full((5,), 0.5, dtype=F64), VP())
    with pytest.raises(ValueError, match="kind"):
        g.predict(x, 0.5, VP(), "noise")
    with pytest.raises(ValueError, match="u"):
        g.reverse_kernel(x, 0.3, 0.5, VP())
    with pytest.raises(TypeError, match="process"):
        g.score(x, 0.5, object())
    with pytest.raises(TypeError, match="x"):
        g.score(x.numpy(), 0.5, VP())
