"""Noising processes: derivatives, log-SNR inverse, forward-SDE coefficients, validation."""

from __future__ import annotations

import math

import pytest
import torch

from smcdiff.diffusion.processes import (
    EDM,
    VE,
    VP,
    CosineVP,
    CustomProcess,
    LinearInterpolant,
    NoiseProcess,
    TrigInterpolant,
    as_time,
    expand_to,
    get_process,
)

F64 = torch.float64


def _custom_vp_like() -> CustomProcess:
    """A VP-type schedule given only by alpha and sigma (derivatives by autograd)."""
    return CustomProcess(
        lambda t: torch.exp(-(t**2)), lambda t: torch.sqrt(-torch.expm1(-2 * t**2))
    )


def _custom_poly() -> CustomProcess:
    """A non-VP schedule alpha = 1 - t^2 / 2, sigma = t with explicit derivatives."""
    return CustomProcess(
        lambda t: 1 - 0.5 * t**2,
        lambda t: t,
        d_alpha_fn=lambda t: -t,
        d_sigma_fn=lambda t: torch.ones_like(t),
    )


PROCESSES = {
    "vp": VP(),
    "vp-const": VP(beta_min=1.0, beta_max=1.0),
    "cosine": CosineVP(),
    "ve": VE(),
    "edm": EDM(),
    "linear": LinearInterpolant(),
    "trig": TrigInterpolant(),
    "custom-autograd": _custom_vp_like(),
    "custom-explicit": _custom_poly(),
}
IDS = list(PROCESSES)
VARIANCE_PRESERVING = ["vp", "vp-const", "cosine", "trig", "custom-autograd"]


def _times() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 0.02 + 0.95 * torch.rand(64, generator=g, dtype=F64)


def _fd(fn, t: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Fourth-order central difference."""
    return (-fn(t + 2 * h) + 8 * fn(t + h) - 8 * fn(t - h) + fn(t - 2 * h)) / (12 * h)


@pytest.mark.parametrize("name", IDS)
def test_derivatives_match_autograd_and_finite_differences(name):
    p = PROCESSES[name]
    t = _times()
    for fn, dfn in ((p.alpha, p.d_alpha), (p.sigma, p.d_sigma)):
        d = dfn(t)
        torch.testing.assert_close(d, _fd(fn, t), rtol=1e-7, atol=1e-7)
        tt = t.clone().requires_grad_(True)
        y = fn(tt)
        ga = torch.autograd.grad(y.sum(), tt)[0] if y.requires_grad else torch.zeros_like(t)
        torch.testing.assert_close(d, ga, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", IDS)
def test_drift_and_diffusion_match_definition(name):
    p = PROCESSES[name]
    t = _times()
    # f = d log alpha / dt ; g^2 = 2 sigma^2 d/dt log(sigma / alpha), by finite differences
    f_fd = _fd(lambda u: torch.log(p.alpha(u)), t)
    g2_fd = 2 * p.sigma(t) ** 2 * _fd(lambda u: torch.log(p.sigma(u) / p.alpha(u)), t)
    torch.testing.assert_close(p.drift_coef(t), f_fd, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(p.diffusion_sq(t), g2_fd, rtol=1e-7, atol=1e-7)
    # and equals d sigma^2/dt - 2 f sigma^2 (the form with the marginal variance)
    g2_alt = _fd(lambda u: p.sigma(u) ** 2, t) - 2 * p.drift_coef(t) * p.sigma(t) ** 2
    torch.testing.assert_close(p.diffusion_sq(t), g2_alt, rtol=1e-7, atol=1e-7)
    assert bool((p.diffusion_sq(t) > 0).all())


def test_vp_sde_coefficients_are_beta():
    p = VP(beta_min=0.1, beta_max=20.0)
    t = _times()
    beta = 0.1 + 19.9 * t
    torch.testing.assert_close(p.diffusion_sq(t), beta, rtol=1e-14, atol=0)
    torch.testing.assert_close(p.drift_coef(t), -beta / 2, rtol=1e-14, atol=0)
    # alpha = exp(-int beta / 2) (Song et al. 2021, VP-SDE mean)
    torch.testing.assert_close(
        p.alpha(t), torch.exp(-0.5 * (0.1 * t + 0.5 * 19.9 * t**2)), rtol=1e-14, atol=0
    )
    # generic base-class formulas agree with the closed forms
    torch.testing.assert_close(NoiseProcess.drift_coef(p, t), -beta / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(NoiseProcess.diffusion_sq(p, t), beta, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", VARIANCE_PRESERVING)
def test_variance_preserving(name):
    p = PROCESSES[name]
    t = torch.cat([torch.tensor([0.0, 1e-12, 1e-6], dtype=F64), _times()])
    torch.testing.assert_close(
        p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-15
    )


def test_closed_forms_of_each_process():
    t = _times()
    c = CosineVP(s=0.008)
    phi = lambda u: 0.5 * math.pi * (u + 0.008) / 1.008
    torch.testing.assert_close(c.alpha(t), torch.cos(phi(t)) / math.cos(phi(torch.zeros(()))))
    ve = VE(sigma_min=0.01, sigma_max=50.0)
    torch.testing.assert_close(ve.sigma(t), 0.01 * 5000.0**t)
    assert ve.sigma(0.0).item() == 0.0 and ve.log_snr(0.0).item() == math.inf
    edm = EDM(sigma_min=0.002, sigma_max=80.0)
    torch.testing.assert_close(edm.sigma(t), 80 * t)
    assert edm.t_min == pytest.approx(0.002 / 80)
    torch.testing.assert_close(LinearInterpolant().alpha(t), 1 - t)
    torch.testing.assert_close(TrigInterpolant().alpha(t), torch.cos(0.5 * math.pi * t))
    torch.testing.assert_close(TrigInterpolant().sigma(t), torch.sin(0.5 * math.pi * t))


@pytest.mark.parametrize("name", IDS)
def test_log_snr_definition_and_endpoints(name):
    p = PROCESSES[name]
    t = _times()
    torch.testing.assert_close(
        p.log_snr(t), torch.log(p.alpha(t)) - torch.log(p.sigma(t)), rtol=1e-13, atol=1e-13
    )
    lam0 = p.log_snr(0.0)
    assert lam0.item() == math.inf
    assert p.alpha(0.0).item() == pytest.approx(1.0, abs=1e-15)
    assert p.sigma(0.0).item() == 0.0
    # strictly decreasing on the grid and finite on [t_min, t_max]
    grid = torch.linspace(p.t_min, p.t_max, 200, dtype=F64)
    lam = p.log_snr(grid)
    assert bool(torch.isfinite(lam).all())
    assert bool((lam[1:] < lam[:-1]).all())
    for v in (p.alpha(grid), p.sigma(grid), p.d_alpha(grid), p.d_sigma(grid)):
        assert bool(torch.isfinite(v).all())


@pytest.mark.parametrize("name", IDS)
def test_t_of_log_snr_round_trips(name):
    p = PROCESSES[name]
    t = torch.cat([torch.tensor([1e-8, 1e-4, p.t_min, p.t_max], dtype=F64), _times()])
    torch.testing.assert_close(p.t_of_log_snr(p.log_snr(t)), t, rtol=1e-9, atol=1e-14)
    assert p.t_of_log_snr(math.inf).item() == 0.0


# Ranges of lambda covered by t in (0, 1]. Near t = 1 a float64 t cannot resolve 1 - t below
# ~1e-16, so lambda -> -inf is only reachable to ~1e-9 precision down to about -12 for processes
# with alpha(1) = 0; the positive side (t -> 0) is exact far out.
EXTREME_LAMBDA = {
    "vp": (VP().log_snr(1.0).item(), 40.0),
    "vp-const": (VP(1.0, 1.0).log_snr(1.0).item(), 40.0),
    "cosine": (-12.0, 40.0),
    "ve": (VE().log_snr(1.0).item(), -math.log(0.01) - 1e-9),
    "edm": (-math.log(80.0), 40.0),
    "linear": (-12.0, 40.0),
    "trig": (-12.0, 40.0),
    "custom-autograd": (PROCESSES["custom-autograd"].log_snr(1.0).item(), 40.0),
    "custom-explicit": (PROCESSES["custom-explicit"].log_snr(1.0).item(), 40.0),
}


@pytest.mark.parametrize("name", IDS)
def test_log_snr_of_t_of_log_snr_at_extreme_lambda(name):
    p = PROCESSES[name]
    lo, hi = EXTREME_LAMBDA[name]
    lam = torch.linspace(lo, hi, 301, dtype=F64)
    t = p.t_of_log_snr(lam)
    assert bool(((t >= 0) & (t <= 1)).all())
    torch.testing.assert_close(p.log_snr(t), lam, rtol=1e-9, atol=1e-9)


def test_closed_form_inverses_agree_with_bisection():
    lam = torch.linspace(-4.0, 20.0, 97, dtype=F64)
    for p in (VP(), CosineVP(), LinearInterpolant(), TrigInterpolant(), EDM()):
        custom = CustomProcess(p.alpha, p.sigma)
        # bisection on [0, 1]: EDM's lambda covers [-log sigma_max, inf) there
        torch.testing.assert_close(
            custom.t_of_log_snr(lam), p.t_of_log_snr(lam), rtol=1e-12, atol=1e-15
        )


def test_out_of_range_lambda():
    # VE: lambda above lambda(0+) = -log sigma_min only at t = 0
    assert VE().t_of_log_snr(10.0).item() == 0.0
    # Linear / trig / cosine: lambda = -inf is t = 1 exactly
    for p in (LinearInterpolant(), TrigInterpolant(), CosineVP()):
        assert p.t_of_log_snr(-math.inf).item() == pytest.approx(1.0, abs=1e-15)
    assert not bool(torch.isnan(VP().t_of_log_snr(torch.tensor([-math.inf, math.inf]))).any())


@pytest.mark.parametrize("name", IDS)
def test_float32_close_to_float64(name):
    p = PROCESSES[name]
    t64 = torch.cat([torch.tensor([1e-6, 1e-3], dtype=F64), _times()])
    t32 = t64.float()
    for m in ("alpha", "sigma", "d_alpha", "d_sigma", "drift_coef", "diffusion_sq"):
        v32, v64 = getattr(p, m)(t32), getattr(p, m)(t32.double())
        assert v32.dtype == torch.float32, m
        torch.testing.assert_close(v32.double(), v64, rtol=2e-5, atol=1e-6, msg=m)
    lam32 = p.log_snr(t32)
    torch.testing.assert_close(lam32.double(), p.log_snr(t32.double()), rtol=1e-5, atol=1e-5)
    back = p.t_of_log_snr(lam32)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back.double(), t32.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", IDS)
def test_per_particle_times_and_expand_to(name):
    p = PROCESSES[name]
    g = torch.Generator().manual_seed(1)
    t = 0.05 + 0.9 * torch.rand(3, 5, generator=g, dtype=F64)
    a = p.alpha(t)
    assert a.shape == (3, 5)
    for i in range(3):
        for j in range(5):
            assert a[i, j].item() == pytest.approx(p.alpha(float(t[i, j])).item(), rel=1e-14)
    x = torch.randn(3, 5, 2, 4, generator=g, dtype=F64)
    assert expand_to(a, x).shape == (3, 5, 1, 1)
    assert (expand_to(a, x) * x).shape == x.shape
    assert expand_to(p.alpha(0.5), x).shape == (1, 1, 1, 1)
    # the coefficient takes x's dtype: float64 times never promote a float32 state
    assert expand_to(a, x.float()).dtype == torch.float32


def test_expand_to_rejects_non_prefix():
    x = torch.zeros(3, 5, 2)
    with pytest.raises(ValueError, match="prefix"):
        expand_to(torch.zeros(5), x)
    with pytest.raises(ValueError, match="more dims"):
        expand_to(torch.zeros(3, 5, 2, 1), x)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
@pytest.mark.parametrize("name", ["vp", "edm", "custom-autograd"])
def test_time_outside_unit_interval_raises(name, bad):
    p = PROCESSES[name]
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        p.alpha(bad)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        p.diffusion_sq(torch.tensor([0.5, bad]))


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="t must be"):
        as_time("0.5")
    with pytest.raises(TypeError, match="t must be"):
        as_time(True)
    with pytest.raises(ValueError, match="unknown process 'foo'"):
        get_process("foo")
    with pytest.raises(TypeError, match="process must be"):
        get_process(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta_min"):
        VP(beta_min=-1.0)
    with pytest.raises(ValueError, match="beta_max"):
        VP(beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        VE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        EDM(sigma_min=0.0)
    with pytest.raises(TypeError, match="alpha_fn"):
        CustomProcess(1.0, lambda t: t)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="t_min"):
        CustomProcess(lambda t: 1 - t, lambda t: t, t_min=0.5, t_max=0.4)


def test_get_process_names():
    assert get_process("vp") == VP()
    assert get_process("VP_linear") == VP()
    assert isinstance(get_process("cosine"), CosineVP)
    assert isinstance(get_process("ve"), VE)
    assert isinstance(get_process("edm"), EDM)
    assert isinstance(get_process("rectified_flow"), LinearInterpolant)
    assert isinstance(get_process("gvp"), TrigInterpolant)
    p = VE(sigma_max=10.0)
    assert get_process(p) is p


def test_custom_autograd_under_no_grad_and_inference_mode():
    p = _custom_vp_like()
    t = torch.tensor([0.3, 0.7], dtype=F64)
    ref = -2 * t * torch.exp(-(t**2))
    with torch.no_grad():
        torch.testing.assert_close(p.d_alpha(t), ref)
    with torch.inference_mode():
        torch.testing.assert_close(p.d_alpha(torch.tensor([0.3, 0.7], dtype=F64)), ref)


def test_processes_are_frozen_and_hashable():
    p = VP()
    with pytest.raises(AttributeError):
        p.beta_min = 1.0  # type: ignore[misc]
    assert hash(p) == hash(VP())
