"""Parametrizations: exact conversions between eps, x0, score, velocity, v; DiffusionModel."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from smcdiff.diffusion.parametrization import KINDS, DiffusionModel, all_finite, convert
from smcdiff.diffusion.processes import (
    EDM,
    VE,
    VP,
    CosineVP,
    CustomProcess,
    LinearInterpolant,
    TrigInterpolant,
    expand_to,
)

F64 = torch.float64
PROCESSES = {
    "vp": VP(),
    "cosine": CosineVP(),
    "ve": VE(),
    "edm": EDM(),
    "linear": LinearInterpolant(),
    "trig": TrigInterpolant(),
    "custom": CustomProcess(lambda t: 1 - 0.5 * t**2, lambda t: t),
}
IDS = list(PROCESSES)


def _setup(name: str, dtype=F64):
    """x0, eps, per-particle t [B, N], x = alpha x0 + sigma eps, with x: [B, N, 2, 3]."""
    p = PROCESSES[name]
    g = torch.Generator().manual_seed(7)
    B, N = 3, 4
    lo, hi = max(p.t_min, 0.02), min(p.t_max, 0.97)
    t = (lo + (hi - lo) * torch.rand(B, N, generator=g, dtype=F64)).to(dtype)
    x0 = torch.randn(B, N, 2, 3, generator=g, dtype=F64).to(dtype)
    eps = torch.randn(B, N, 2, 3, generator=g, dtype=F64).to(dtype)
    a, s = expand_to(p.alpha(t), x0), expand_to(p.sigma(t), x0)
    return p, t, x0, eps, a * x0 + s * eps


def _truth(p, t, x0, eps):
    """Each kind from its definition."""
    a, s = expand_to(p.alpha(t), x0), expand_to(p.sigma(t), x0)
    da, ds = expand_to(p.d_alpha(t), x0), expand_to(p.d_sigma(t), x0)
    return {
        "eps": eps,
        "x0": x0,
        "score": -eps / s,
        "velocity": da * x0 + ds * eps,
        "v": a * eps - s * x0,
    }


@pytest.mark.parametrize("name", IDS)
def test_conversions_match_definitions(name):
    p, t, x0, eps, x = _setup(name)
    truth = _truth(p, t, x0, eps)
    for a, b in itertools.product(KINDS, KINDS):
        out = convert(truth[a], a, b, x, t, p)
        scale = truth[b].abs().max().item()
        torch.testing.assert_close(out, truth[b], rtol=1e-10, atol=1e-10 * scale, msg=f"{a}->{b}")


@pytest.mark.parametrize("name", IDS)
def test_round_trips_are_identity(name):
    p, t, _, _, x = _setup(name)
    g = torch.Generator().manual_seed(3)
    out = torch.randn(x.shape, generator=g, dtype=F64)  # arbitrary prediction, any kind
    for a, b in itertools.product(KINDS, KINDS):
        back = convert(convert(out, a, b, x, t, p), b, a, x, t, p)
        torch.testing.assert_close(back, out, rtol=1e-10, atol=1e-10, msg=f"{a}->{b}->{a}")
    # a cycle through all five kinds
    y = out
    for a, b in zip(KINDS, KINDS[1:] + KINDS[:1]):
        y = convert(y, a, b, x, t, p)
    torch.testing.assert_close(y, out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", IDS)
def test_velocity_is_probability_flow_drift(name):
    # PF-ODE: dx/dt = f x - g^2/2 * score (Song et al. 2021, Eq. 13)
    p, t, x0, eps, x = _setup(name)
    score = -eps / expand_to(p.sigma(t), x)
    f, g2 = expand_to(p.drift_coef(t), x), expand_to(p.diffusion_sq(t), x)
    u = convert(x0, "x0", "velocity", x, t, p)
    torch.testing.assert_close(u, f * x - 0.5 * g2 * score, rtol=1e-10, atol=1e-9)


def test_scalar_time_and_float32():
    p, t, x0, eps, x = _setup("vp", dtype=torch.float32)
    for a, b in itertools.product(KINDS, KINDS):
        out = convert(_truth(p, t, x0, eps)[a], a, b, x, t, p)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, _truth(p, t, x0, eps)[b], rtol=1e-4, atol=1e-4)
    # Python float time keeps float32 x float32
    y = convert(x, "eps", "x0", x, 0.5, p)
    assert y.dtype == torch.float32


class GaussianDenoiser:
    """Exact E[x0 | x_t] for x0 ~ N(0, c^2 I): alpha c^2 / (alpha^2 c^2 + sigma^2) x."""

    def __init__(self, process, c=1.5):
        self.p, self.c = process, c

    def var(self, x, t):
        a, s = expand_to(self.p.alpha(t), x), expand_to(self.p.sigma(t), x)
        return a, s, a * a * self.c**2 + s * s

    def __call__(self, x, t, shift=0.0):
        a, _, v = self.var(x, t)
        return a * self.c**2 / v * x + shift


@pytest.mark.parametrize("name", IDS)
def test_diffusion_model_from_x0_net(name):
    p, t, _, _, x = _setup(name)
    net = GaussianDenoiser(p)
    m = DiffusionModel(net, p, kind="x0")
    a, s, v = net.var(x, t)
    # exact score of the marginal N(0, v I), and the other kinds from it
    score = -x / v
    eps = -s * score
    x0 = a * 1.5**2 / v * x
    torch.testing.assert_close(m.score(x, t), score, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.eps(x, t), eps, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.x0(x, t), x0, rtol=1e-12, atol=0)
    torch.testing.assert_close(m(x, t), x0, rtol=0, atol=0)
    da, ds = expand_to(p.d_alpha(t), x), expand_to(p.d_sigma(t), x)
    torch.testing.assert_close(m.velocity(x, t), da * x0 + ds * eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.v(x, t), a * eps - s * x0, rtol=1e-10, atol=1e-10)
    assert m.nfe == 6  # one per call
    m.reset_nfe()
    assert m.nfe == 0
    # an eps-predicting wrapper of the same model agrees in every kind
    m_eps = DiffusionModel(lambda x, t: m.eps(x, t), p, kind="eps")
    for k in KINDS:
        torch.testing.assert_close(m_eps.predict(x, t, k), m.predict(x, t, k), rtol=1e-9, atol=1e-9)
    # conditioning keywords are passed through
    torch.testing.assert_close(m.x0(x, t, shift=1.0), x0 + 1.0)


def test_diffusion_model_by_process_name():
    m = DiffusionModel(lambda x, t: torch.zeros_like(x), "vp", kind="v")
    assert m.process == VP() and m.kind == "v"
    x = torch.ones(5, 2, dtype=F64)
    # v = 0 => x0 = alpha x / (alpha^2 + sigma^2) = alpha x for VP
    torch.testing.assert_close(m.x0(x, 0.3), VP().alpha(0.3) * x)


def test_nan_output_raises_naming_t():
    m = DiffusionModel(lambda x, t: x * float("nan"), VP(), kind="eps")
    x = torch.ones(4, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"NaN or inf at t=0\.25"):
        m(x, 0.25)
    with pytest.raises(ValueError, match=r"NaN or inf at t=0\.25"):
        m.score(x, torch.tensor(0.25, dtype=F64))

    def net(x, t):  # infinite output for particle 2 only
        out = x.clone()
        out[2] = float("inf")
        return out

    m = DiffusionModel(net, VP(), kind="eps")
    t = torch.tensor([0.1, 0.2, 0.375, 0.4], dtype=F64)
    with pytest.raises(ValueError, match=r"t=\[0\.375\]"):
        m.x0(x, t)
    # the check can be switched off (e.g. to avoid a device sync)
    m = DiffusionModel(net, VP(), kind="eps", check_finite=False)
    assert torch.isinf(m(x, t)).any()


def test_bad_inputs_raise():
    net = lambda x, t: x
    with pytest.raises(ValueError, match="unknown kind 'noise'"):
        DiffusionModel(net, VP(), kind="noise")
    with pytest.raises(ValueError, match="unknown process"):
        DiffusionModel(net, "vp-cosine-whatever")
    with pytest.raises(TypeError, match="net must be callable"):
        DiffusionModel(3, VP())  # type: ignore[arg-type]
    m = DiffusionModel(net, VP())
    x = torch.ones(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="unknown kind 'flow'"):
        m.predict(x, 0.5, "flow")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        m(x, 1.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        m.eps(x, torch.tensor([0.5, -0.1, 0.2], dtype=F64))
    with pytest.raises(ValueError, match="shape of x"):
        DiffusionModel(lambda x, t: x[:1], VP())(x, 0.5)
    with pytest.raises(TypeError, match="must return a tensor"):
        DiffusionModel(lambda x, t: 1.0, VP())(x, 0.5)
    with pytest.raises(ValueError, match="unknown from_kind"):
        convert(x, "epsilon", "x0", x, 0.5, VP())
    with pytest.raises(ValueError, match="unknown to_kind"):
        convert(x, "eps", "data", x, 0.5, VP())
    with pytest.raises(ValueError, match="shape of x"):
        convert(x[:2], "eps", "x0", x, 0.5, VP())
    with pytest.raises(ValueError, match="prefix"):
        convert(x, "eps", "x0", x, torch.full((2,), 0.5, dtype=F64), VP())


def test_all_finite_is_exact():
    x = torch.randn(100, 3, dtype=F64)
    assert all_finite(x)
    for bad in (math.nan, math.inf, -math.inf):
        y = x.clone()
        y[7, 1] = bad
        assert not all_finite(y)
    y = x.clone()
    y[0, 0], y[1, 0] = math.inf, -math.inf  # sum is NaN
    assert not all_finite(y)
    # finite entries whose sum overflows: the fallback test says finite
    assert all_finite(torch.full((4,), 1e308, dtype=F64))
    assert all_finite(torch.full((10,), 6e4, dtype=torch.float16))  # sum overflows in half
    assert all_finite(torch.arange(5))  # integers are finite
    assert not all_finite(torch.tensor([1 + 1j, complex(math.nan, 0)]))
    z = torch.randn(3, requires_grad=True)
    assert all_finite(z * 2)


def _gauss_score(x):
    """Exact score of N(0, diag(0.3, 0.05)) under VP at t = 0.3."""
    p = VP()
    a, s = p.alpha(torch.tensor(0.3, dtype=F64)), p.sigma(torch.tensor(0.3, dtype=F64))
    var = a**2 * torch.tensor([0.3, 0.05], dtype=F64) + s**2
    return -x / var


def _gauss_model():
    return DiffusionModel(lambda x, t: _gauss_score(x), VP(), "score")


class _Shifted(DiffusionModel):
    """A model whose __call__ is overridden: predict must convert its output."""

    def __call__(self, x, t, **cond):
        return super().__call__(x, t, **cond) + 1.0


def test_model_predict_equals_convert():
    """predict = convert(model(x, t)), also when __call__ is overridden; t is validated."""
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for model, out in ((_gauss_model(), _gauss_score(x)),
                       (_Shifted(lambda x, t: _gauss_score(x), VP(), "score"),
                        _gauss_score(x) + 1.0)):
        for kind in KINDS:
            ref = convert(out, "score", kind, x, 0.3, VP())
            assert bool((model.predict(x, 0.3, kind) == ref).all()), kind
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
            model.predict(x, 1.5, "x0")
