"""Time grids: endpoints, monotonicity, spacing in t, lambda, (sigma/alpha)^(1/rho); errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smcdiff.diffusion.grids import GRID_KINDS, check_grid, time_grid
from smcdiff.diffusion.processes import (
    EDM,
    VE,
    VP,
    CosineVP,
    CustomProcess,
    LinearInterpolant,
    TrigInterpolant,
)

F64 = torch.float64
PROCESSES = {
    "vp": VP(),
    "cosine": CosineVP(),
    "ve": VE(),
    "edm": EDM(),
    "linear": LinearInterpolant(),
    "trig": TrigInterpolant(),
    "custom": CustomProcess(
        lambda t: torch.exp(-(t**2)), lambda t: torch.sqrt(-torch.expm1(-2 * t**2))
    ),
}


def _body(grid: torch.Tensor, final: str) -> torch.Tensor:
    return grid[:-1] if final == "zero" else grid


@pytest.mark.parametrize("final", ["zero", "t_min"])
@pytest.mark.parametrize("kind", GRID_KINDS)
@pytest.mark.parametrize("name", list(PROCESSES))
def test_endpoints_monotone_and_spacing(name, kind, final):
    p = PROCESSES[name]
    n = 12
    g = time_grid(p, n, kind=kind, final=final)
    assert g.shape == (n + 1,) and g.dtype == F64
    assert g[0].item() == p.t_max
    assert g[-1].item() == (0.0 if final == "zero" else p.t_min)
    if final == "zero":
        assert g[-2].item() == p.t_min
    assert bool((g[1:] < g[:-1]).all())
    assert bool(((g >= 0) & (g <= 1)).all())
    b = _body(g, final)
    lam = p.log_snr(b)
    if kind == "uniform":
        coord = b
    elif kind == "quadratic":
        coord = torch.sqrt(b)
    elif kind == "logsnr":
        coord = lam
    else:
        coord = torch.exp(-lam / 7.0)  # (sigma/alpha)^(1/rho)
    d = torch.diff(coord)
    torch.testing.assert_close(d, d.mean().expand_as(d), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_final_zero_never_nan(name):
    p = PROCESSES[name]
    for kind in GRID_KINDS:
        g = time_grid(p, 7, kind=kind, final="zero")
        assert g[-1].item() == 0.0
        lam = p.log_snr(g)
        assert not bool(torch.isnan(lam).any())
        assert lam[-1].item() == math.inf
        assert bool(torch.isfinite(lam[:-1]).all())
        assert bool((lam[1:] > lam[:-1]).all())
        for v in (p.alpha(g), p.sigma(g)):
            assert bool(torch.isfinite(v).all())


def test_edm_karras_grid_matches_karras_formula():
    # sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0 (Karras Eq. 5)
    p = EDM(sigma_min=0.002, sigma_max=80.0)
    n, rho = 10, 7.0
    g = time_grid(p, n, kind="karras", final="zero", rho=rho)
    i = np.arange(n)
    ref = (80 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    np.testing.assert_allclose(p.sigma(g[:-1]).numpy(), ref, rtol=1e-12)
    assert g[-1].item() == 0.0


def test_logsnr_grid_same_lambdas_across_processes():
    # Over a common lambda range, VP, VE-like and flow logSNR grids share their lambdas.
    lam_s, lam_e = -4.0, 4.0
    ref = torch.linspace(lam_s, lam_e, 9, dtype=F64)
    for p in (VP(), LinearInterpolant(), TrigInterpolant(), CosineVP()):
        ts, te = p.t_of_log_snr(lam_s).item(), p.t_of_log_snr(lam_e).item()
        g = time_grid(p, 8, kind="logsnr", t_start=ts, t_end=te, final="t_min")
        torch.testing.assert_close(p.log_snr(g), ref, rtol=1e-10, atol=1e-10)


def test_large_rho_karras_approaches_logsnr():
    # (sigma/alpha)^(1/rho) = exp(-lambda/rho) is affine in lambda up to O(lambda^2/rho).
    p = VP()
    ref = p.log_snr(time_grid(p, 10, kind="logsnr", final="t_min"))
    errs = []
    for rho in (1e3, 1e5):
        lam = p.log_snr(time_grid(p, 10, kind="karras", rho=rho, final="t_min"))
        errs.append((lam - ref).abs().max().item())
    assert errs[1] < 1e-3
    assert errs[0] / errs[1] == pytest.approx(100.0, rel=0.05)


def test_explicit_ends_and_dtype():
    p = LinearInterpolant()
    g = time_grid(p, 4, kind="uniform", t_start=1.0, t_end=0.0, final="t_min")
    torch.testing.assert_close(g, torch.linspace(1, 0, 5, dtype=F64))
    g32 = time_grid(VP(), 20, kind="logsnr", dtype=torch.float32)
    assert g32.dtype == torch.float32 and g32[-1].item() == 0.0
    one = time_grid(VP(), 1)
    assert one.tolist() == [1.0, 0.0]
    one = time_grid(VP(), 1, final="t_min")
    assert one.tolist() == [1.0, 1e-3]
    g = time_grid("ve", 5, kind="logsnr", t_start=0.5, t_end=0.01)
    assert g[0].item() == 0.5 and g[-2].item() == 0.01 and g[-1].item() == 0.0


def test_bad_arguments_raise():
    p = VP()
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        time_grid(p, 0)
    with pytest.raises(TypeError, match="num_steps"):
        time_grid(p, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown grid kind 'cosine'"):
        time_grid(p, 5, kind="cosine")
    with pytest.raises(ValueError, match="unknown final"):
        time_grid(p, 5, final="denoise")
    with pytest.raises(ValueError, match="t_start"):
        time_grid(p, 5, t_start=1.2)
    with pytest.raises(ValueError, match="t_end"):
        time_grid(p, 5, t_start=0.5, t_end=0.6)
    with pytest.raises(ValueError, match="rho"):
        time_grid(p, 5, kind="karras", rho=0.0)
    with pytest.raises(ValueError, match="finite log-SNR"):
        time_grid(LinearInterpolant(), 5, kind="logsnr", t_start=1.0)
    with pytest.raises(ValueError, match="finite log-SNR"):
        time_grid(p, 5, kind="karras", t_end=0.0, final="t_min")
    with pytest.raises(ValueError, match="repeat t = 0"):
        time_grid(p, 5, kind="uniform", t_end=0.0, final="zero")
    with pytest.raises(ValueError, match="unknown process"):
        time_grid("nope", 5)
    with pytest.raises(ValueError, match="strictly decreasing"):
        # collapses in float32: adjacent times closer than float32 resolution near 1
        time_grid(
            p, 10, kind="uniform", t_start=1.0, t_end=1.0 - 1e-9, final="t_min", dtype=torch.float32
        )


def test_check_grid():
    g = check_grid([1.0, 0.5, 0.0])
    assert g.dtype == F64 and g.tolist() == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match=r"strictly decreasing.*grid\[1\]"):
        check_grid([1.0, 0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"strictly decreasing"):
        check_grid(torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="NaN at index 1"):
        check_grid([1.0, float("nan"), 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_grid([1.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_grid([0.5, -0.1])
    with pytest.raises(ValueError, match="1-D"):
        check_grid(torch.ones(2, 2))
    with pytest.raises(ValueError, match="at least 2"):
        check_grid([0.5])
    with pytest.raises(TypeError, match="1-D array"):
        check_grid(["a", "b"])
