"""Analytical teleportation: exact on Gaussian data, against an independent ODE integration."""

import numpy as np
import pytest
import torch
from helpers import gen
from scipy.integrate import solve_ivp

from smcdiff.diffusion.processes import EDM, VP, LinearInterpolant
from smcdiff.gaussian import Gaussian, GaussianMixture, teleport

F64 = torch.float64


def data_gaussian() -> Gaussian:
    A = torch.tensor([[1.0, 0.4, 0.1], [0.4, 0.6, -0.2], [0.1, -0.2, 0.2]], dtype=F64)
    return Gaussian(torch.tensor([0.5, -1.0, 2.0], dtype=F64), A)


def ode_reference(law, x, t0, t1, proc, rtol=1e-12):
    """Integrate the exact PF-ODE dx/dt = law.velocity(x, t) with DOP853 (independent of
    the closed-form solution) from t0 to each time in t1 (a float or a decreasing list)."""
    shape = x.shape
    t_eval = [t1] if isinstance(t1, float) else list(t1)

    def rhs(t, y):
        xt = torch.from_numpy(y).reshape(shape)
        return law.velocity(xt, float(t), proc).reshape(-1).numpy()

    sol = solve_ivp(rhs, (t0, t_eval[-1]), x.reshape(-1).numpy(), method="DOP853", rtol=rtol,
                    atol=rtol, t_eval=t_eval)
    assert sol.success
    out = [torch.from_numpy(sol.y[:, i]).reshape(shape) for i in range(len(t_eval))]
    return out[0] if isinstance(t1, float) else out


@pytest.mark.parametrize(
    "proc, T, t_skips",
    [(VP(), 1.0, (0.6, 0.3, 0.05)), (EDM(), 1.0, (0.2, 0.02)),
     (LinearInterpolant(), 1.0, (0.5, 0.1))],
    ids=["VP", "EDM", "Linear"],
)
def test_teleport_is_the_exact_pf_ode_state_on_gaussian_data(proc, T, t_skips):
    g = data_gaussian()
    x_T = g.marginal(T, proc).sample(16, gen(0))
    refs = ode_reference(g, x_T, T, list(t_skips), proc)
    for t_skip, ref in zip(t_skips, refs):
        out = teleport(x_T, T, t_skip, proc, g.mean, g.cov)
        torch.testing.assert_close(out, g.pf_ode_solution(x_T, T, t_skip, proc),
                                   rtol=1e-13, atol=1e-13)
        scale = ref.abs().max()
        assert (out - ref).abs().max() <= 1e-8 * scale, (out - ref).abs().max()
    # the teleported cloud has the exact law p_{t_skip}: affine map check
    t_skip = t_skips[-1]
    c = teleport(torch.zeros(1, 3, dtype=F64), T, t_skip, proc, g)[0]
    M = (teleport(torch.eye(3, dtype=F64), T, t_skip, proc, g) - c).T
    pT, ps = g.marginal(T, proc), g.marginal(t_skip, proc)
    torch.testing.assert_close(c + M @ pT.mean, ps.mean, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(M @ pT.cov @ M.T, ps.cov, rtol=1e-10, atol=1e-12)


def test_teleport_from_dataset_moments():
    """With Gaussian.from_samples the map uses the sample mean and covariance; on a large
    Gaussian data set it converges to the exact map (error ~ sampling error of the moments)."""
    g, proc = data_gaussian(), VP()
    data = g.sample(200000, gen(1))
    g_hat = Gaussian.from_samples(data)
    x_T = g.marginal(1.0, proc).sample(8, gen(2))
    out = teleport(x_T, 1.0, 0.3, proc, g_hat)
    torch.testing.assert_close(out, teleport(x_T, 1.0, 0.3, proc, data.mean(0), torch.cov(data.T)))
    exact = g.pf_ode_solution(x_T, 1.0, 0.3, proc)
    assert (out - exact).abs().max() < 0.02
    assert (out - exact).abs().max() > 0  # it is an estimate, not the truth


def test_teleport_on_a_mixture_is_approximate_and_worsens_towards_data():
    """Gaussian-score teleportation on a GMM: exact only in the high-noise limit; the error
    against the mixture's own PF-ODE grows as t_skip decreases (Wang & Vastola 2023)."""
    mix = GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64),
                          torch.tensor([[-1.5, 0.0], [1.5, 0.5]], dtype=F64),
                          torch.tensor([[[0.2, 0.0], [0.0, 0.3]], [[0.3, 0.1], [0.1, 0.2]]],
                                       dtype=F64))
    proc = VP()
    g = Gaussian(mix.mean, mix.cov)  # the data set's mean and covariance
    x_T = mix.marginal(1.0, proc).sample(64, gen(3))
    t_skips = [0.9, 0.6, 0.4, 0.2]
    refs = ode_reference(mix, x_T, 1.0, t_skips, proc, rtol=1e-9)
    errs = [(teleport(x_T, 1.0, t, proc, g) - r).norm(dim=-1).mean().item()
            for t, r in zip(t_skips, refs)]
    assert np.all(np.diff(errs) > 0), errs
    assert errs[0] < 1e-2 and errs[-1] > 0.1, errs


def test_teleport_per_particle_times_and_errors():
    g, proc = data_gaussian(), VP()
    x_T = g.marginal(1.0, proc).sample((2, 5), gen(4))
    t_skip = torch.tensor([0.3, 0.6], dtype=F64)
    out = teleport(x_T, 1.0, t_skip, proc, g)
    for i in range(2):
        torch.testing.assert_close(out[i], teleport(x_T[i], 1.0, float(t_skip[i]), proc, g))
    with pytest.raises(ValueError, match="t_skip"):
        teleport(x_T, 0.5, 0.7, proc, g)
    with pytest.raises(ValueError, match="cov"):
        teleport(x_T, 1.0, 0.5, proc, g.mean)
    with pytest.raises(ValueError, match="cov"):
        teleport(x_T, 1.0, 0.5, proc, g, g.cov)
