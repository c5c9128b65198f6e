# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Gaussian score approximation and analytical teleportation
#
# Wang & Vastola (2023), *The Hidden Linear Structure in Score-Based Models and its
# Application* (arXiv 2311.10892), make two observations:
#
# 1. for Gaussian data the probability-flow ODE (PF-ODE) has a closed-form solution, so the
#    generated sample is an affine function of the initial noise;
# 2. at high noise the score of realistic data is close to the score of the Gaussian with
#    the data's mean and covariance.
#
# Together they give **analytical teleportation**: replace the early, noisy part of sampling
# by the Gaussian closed form (no network evaluation) and start the numerical solver at an
# intermediate time. This notebook checks the three steps exactly on 2-D examples:
#
# - (a) closed-form PF-ODE trajectories of a Gaussian against a numerical solver;
# - (b) how far along `t` the Gaussian approximation of a Gaussian mixture's score holds;
# - (c) how many network evaluations (NFE) teleportation saves at equal error.
#
# Conventions (as in all of `smcdiff`): diffusion time $t \in [0, 1]$, $t = 0$ data,
# $t = 1$ noise; $x_t = \alpha_t x_0 + \sigma_t \varepsilon$; half log-SNR
# $\lambda_t = \log(\alpha_t/\sigma_t)$. The process is VP with a linear
# $\beta(t) = 0.1 + 19.9\,t$, whose $\lambda$ runs from $-5.0$ at $t = 1$ to $+4.6$ at
# $t_{\min} = 10^{-3}$.
#
# Set `SMCDIFF_QUICK=1` for a small run (the tests do); set `SMCDIFF_FIGURES=DIR` to save the
# figures as PNG files (by default they are only drawn).

# %%
import os
import pathlib

import matplotlib.pyplot as plt
import numpy as np
import torch

import smcdiff as sd

QUICK = os.environ.get("SMCDIFF_QUICK", "0") not in ("", "0")
FIG_DIR = os.environ.get("SMCDIFF_FIGURES")
F64 = torch.float64
proc = sd.diffusion.VP()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def save(fig, name: str) -> None:
    """Save a figure to $SMCDIFF_FIGURES (when set and not in quick mode)."""
    if FIG_DIR and not QUICK:
        path = pathlib.Path(FIG_DIR)
        path.mkdir(parents=True, exist_ok=True)
        fig.savefig(path / f"{name}.png", dpi=120, bbox_inches="tight")


# %% [markdown]
# ## (a) Exact PF-ODE trajectories of Gaussian data
#
# For $x_0 \sim \mathcal N(\mu, \Sigma)$ with $\Sigma = \sum_k d_k u_k u_k^\top$ the noised law
# is $p_t = \mathcal N(\alpha_t \mu, C_t)$, $C_t = \alpha_t^2 \Sigma + \sigma_t^2 I$, whose
# eigenvalues on the same eigenvectors are $v_k(t) = \alpha_t^2 d_k + \sigma_t^2$, and the score
# is $\nabla \log p_t(x) = -C_t^{-1}(x - \alpha_t \mu)$.
#
# The PF-ODE is $\dot x = f(t)\,x - \tfrac12 g(t)^2 \nabla \log p_t(x)$ with
# $f = \dot\alpha_t/\alpha_t$ and $g^2 = \tfrac{d}{dt}\sigma_t^2 - 2 f \sigma_t^2$. In the
# coordinates $z_k = u_k^\top (x - \alpha_t \mu)$ the mean terms cancel ($f\alpha_t = \dot\alpha_t$)
# and every mode decouples:
#
# $$\dot z_k = \Big(f + \frac{g^2}{2 v_k}\Big) z_k, \qquad
#   \frac{d}{dt}\log\sqrt{v_k} = \frac{2 f v_k + g^2}{2 v_k} = f + \frac{g^2}{2 v_k},$$
#
# so $z_k(t) = \sqrt{v_k(t)/v_k(s)}\; z_k(s)$ and, for any process,
#
# $$x_t = \alpha_t \mu + \sum_k \sqrt{\frac{v_k(t)}{v_k(s)}}\; u_k u_k^\top (x_s - \alpha_s \mu).$$
#
# This is `Gaussian.pf_ode_solution`. At $t = 0$ it shows the "hidden linear structure": the
# sample is an affine function of the noise, $x_0 = \mu + \sum_k \sqrt{d_k / v_k(1)}\,
# u_k u_k^\top (x_1 - \alpha_1 \mu)$. Every ODE solver applied to this exact model is linear in
# $x$ too, so its error can be measured exactly. Below: trajectories from $x_1 \sim p_1$ by the
# closed form and by DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095) on a logSNR grid, and
# the convergence order of DDIM (1) and DPM-Solver++(2M) (2) against the closed form at
# $t_{\min}$.

# %%
gauss = sd.gaussian.Gaussian(torch.tensor([1.0, -0.5], dtype=F64),
                             torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=F64))
print("eigenvalues d_k:", gauss.eigvals.tolist())
model_a = gauss.model(proc, "x0")
x1 = gauss.marginal(1.0, proc).sample(16 if QUICK else 64, gen(0))

# closed form on a fine grid, and the solver's trajectory on its own grid
t_fine = torch.linspace(1.0, 0.0, 201, dtype=F64)
exact_fine = gauss.pf_ode_solution(x1.expand(len(t_fine), *x1.shape), 1.0, t_fine, proc)
run_a = sd.diffusion.sample(model_a, "dpmsolver++2m", num_steps=20, x_init=x1,
                            return_trajectory=True)
exact_on_grid = gauss.pf_ode_solution(x1.expand(len(run_a.grid), *x1.shape), 1.0, run_a.grid,
                                      proc)
gauss_traj_err = ((run_a.trajectory - exact_on_grid).abs().max()
                  / exact_on_grid.abs().max()).item()
fine = sd.diffusion.sample(model_a, "dpmsolver++2m", num_steps=200, x_init=x1,
                           return_trajectory=True)
exact_fine_grid = gauss.pf_ode_solution(x1.expand(len(fine.grid), *x1.shape), 1.0, fine.grid,
                                        proc)
gauss_traj_err_fine = ((fine.trajectory - exact_fine_grid).abs().max()
                       / exact_fine_grid.abs().max()).item()
print("DPM-Solver++(2M): max relative trajectory error "
      f"{gauss_traj_err:.1e} (20 steps), {gauss_traj_err_fine:.1e} (200 steps)")

# convergence order against the closed form at t_min (final="t_min": no denoise step)
steps_a = [16, 32, 64] if QUICK else [16, 32, 64, 128, 256]
gauss_orders = {}
exact_end = gauss.pf_ode_solution(x1, 1.0, proc.t_min, proc)
for name in ("ddim", "dpmsolver++2m"):
    errs = []
    for n in steps_a:
        r = sd.diffusion.sample(model_a, name, num_steps=n, x_init=x1, final="t_min")
        errs.append((r.x - exact_end).abs().max().item())
    gauss_orders[name] = -np.polyfit(np.log(steps_a), np.log(errs), 1)[0]
    print(f"{name:>14}: errors {' '.join(f'{e:.1e}' for e in errs)}, fitted order "
          f"{gauss_orders[name]:.2f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
u = torch.linspace(-2.5, 4.0, 120, dtype=F64)
v = torch.linspace(-3.0, 2.5, 120, dtype=F64)
UU, VV = torch.meshgrid(u, v, indexing="xy")
dens = gauss.log_prob(torch.stack([UU, VV], -1)).exp()
ax = axes[0]
ax.contour(UU, VV, dens, levels=6, colors="0.6", linewidths=0.8)
for j in range(min(12, x1.shape[0])):
    ax.plot(exact_fine[:, j, 0], exact_fine[:, j, 1], "C0", lw=1)
    ax.plot(run_a.trajectory[:, j, 0], run_a.trajectory[:, j, 1], "C1.", ms=3)
ax.plot([], [], "C0", label="closed form")
ax.plot([], [], "C1.", label="DPM-Solver++(2M), 20 steps")
ax.set(xlim=(-2.5, 4.0), ylim=(-3.0, 2.5), title="PF-ODE trajectories, x_1 -> x_0")
ax.legend(loc="lower right", fontsize=8)
ax = axes[1]
lam_fine = proc.log_snr(t_fine[:-1])
for k in range(2):
    dk = gauss.eigvals[k]
    vk = proc.alpha(t_fine[:-1]) ** 2 * dk + proc.sigma(t_fine[:-1]) ** 2
    v1 = proc.alpha(1.0) ** 2 * dk + proc.sigma(1.0) ** 2
    ax.plot(lam_fine, torch.sqrt(vk / v1), label=f"sqrt(v_k(t)/v_k(1)), d_k = {dk:.2f}")
ax.set(xlabel="lambda = log(alpha/sigma)", ylabel="mode amplification",
       title="each eigen-mode is scaled, never rotated")
ax.legend(fontsize=8)
save(fig, "a_gaussian_trajectories")

# %% [markdown]
# ## (b) How far the Gaussian approximation of a mixture's score holds
#
# For a mixture $p_0 = \sum_k \pi_k \mathcal N(\mu_k, S_k)$ the noised law is
# $p_t = \sum_k \pi_k \mathcal N(\alpha_t \mu_k, C_{t,k})$, $C_{t,k} = \alpha_t^2 S_k +
# \sigma_t^2 I$, and its score mixes the component scores with the responsibilities
# $w_k(x) \propto \pi_k \mathcal N(x; \alpha_t\mu_k, C_{t,k})$:
#
# $$s_{\rm GMM}(x, t) = -\sum_k w_k(x)\, C_{t,k}^{-1}(x - \alpha_t \mu_k).$$
#
# Its Gaussian approximation is the score of $\mathcal N(\bar\mu, \bar\Sigma)$ with the
# mixture's mean $\bar\mu = \sum_k \pi_k \mu_k$ and covariance
# $\bar\Sigma = \sum_k \pi_k (S_k + \mu_k\mu_k^\top) - \bar\mu\bar\mu^\top$:
# $s_{\rm G}(x, t) = -(\alpha_t^2\bar\Sigma + \sigma_t^2 I)^{-1}(x - \alpha_t\bar\mu)$.
# We measure the relative error under the true noised law,
#
# $$\rho(t) = \frac{\mathbb E_{p_t}\,\|s_{\rm GMM}(x_t, t) - s_{\rm G}(x_t, t)\|^2}
#                  {\mathbb E_{p_t}\,\|s_{\rm GMM}(x_t, t)\|^2},$$
#
# by Monte Carlo with exact samples $x_t = \alpha_t x_0 + \sigma_t \varepsilon$.
#
# **High-noise rate.** With $y = \alpha_t x_0$,
# $p_t(x) \propto \mathcal N(x; 0, \sigma_t^2 I)\, M(x)$,
# $M(x) = \mathbb E\exp(x^\top y/\sigma_t^2 - \|y\|^2/2\sigma_t^2)$, so
# $\nabla\log p_t = -x/\sigma_t^2 + \nabla \log M$. Expanding $\log M$ in cumulants of $y$,
# the terms of order one and two in $y$ involve only the mean and covariance of $x_0$, which the
# Gaussian matches; the first unmatched terms are cubic in $y$. For typical $x = O(\sigma_t)$
# they contribute $O(\alpha_t^3/\sigma_t^4)$ to the score, whose size is $O(1/\sigma_t)$. Hence,
# formally,
#
# $$\rho(t) = O\big((\alpha_t/\sigma_t)^6\big) = O(e^{6\lambda_t}) \quad (\lambda_t \to -\infty),$$
#
# and $O(e^{8\lambda_t})$ when the third cumulants of the data vanish (symmetric data). Near
# the data the mixture's score resolves each component while the Gaussian's cannot, and
# $\rho(t) \to O(1)$.

# %%
gmm = sd.gaussian.GaussianMixture(
    torch.tensor([0.2, 0.5, 0.3], dtype=F64),
    torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], dtype=F64),
    torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.4]],
                  [[0.25, -0.05], [-0.05, 0.15]]], dtype=F64),
)
gauss_approx = sd.gaussian.Gaussian(gmm.mean, gmm.cov)  # the "data set's" mean and covariance

n_mc = 2000 if QUICK else 20000
lam_b = torch.linspace(-4.5, 3.5, 33 if QUICK else 81, dtype=F64)
t_b = proc.t_of_log_snr(lam_b)
g_b = gen(1)
rel_err = []
for t in t_b.tolist():
    x_t = gmm.marginal(t, proc).sample(n_mc, g_b)
    s_mix = gmm.score(x_t, t, proc)
    s_gauss = gauss_approx.score(x_t, t, proc)
    rel_err.append((((s_mix - s_gauss) ** 2).sum(-1).mean() / (s_mix**2).sum(-1).mean()).item())
rel_err = np.array(rel_err)
t_b, lam_b = t_b.numpy(), lam_b.numpy()


def crossing(level: float) -> float:
    """The noisiest time where rho(t) reaches `level` (log-linear interpolation between grid
    points)."""
    j = int(np.argmax(rel_err >= level))  # grid runs from noise (low lambda) to data
    if j == 0:
        raise ValueError(f"rho >= {level} already at the noisiest grid point")
    a, b = np.log(rel_err[j - 1]), np.log(rel_err[j])
    w = (np.log(level) - a) / (b - a)
    return float(t_b[j - 1] + w * (t_b[j] - t_b[j - 1]))


t_cross = crossing(0.10)
lam_cross = proc.log_snr(t_cross).item()
high_noise = lam_b < -1.5
highnoise_slope = float(np.polyfit(lam_b[high_noise], np.log(rel_err[high_noise]), 1)[0])
print(f"rho(t) = {rel_err[-1]:.3f} near the data (t = {t_b[-1]:.3f}), "
      f"{rel_err[0]:.1e} at t = {t_b[0]:.3f}")
print(f"rho crosses 10% at t = {t_cross:.3f} (lambda = {lam_cross:+.2f})")
print(f"high-noise slope d log rho / d lambda = {highnoise_slope:.2f} (theory: 6)")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
axes[0].semilogy(t_b, rel_err, "C0.-")
axes[0].axhline(0.1, color="0.5", ls="--", lw=0.8)
axes[0].axvline(t_cross, color="0.5", ls="--", lw=0.8)
axes[0].set(xlabel="t", ylabel="rho(t)", title="relative score error of the Gaussian approx.")
axes[1].semilogy(lam_b, rel_err, "C0.", label="Monte Carlo")
fit = np.exp(np.polyval(np.polyfit(lam_b[high_noise], np.log(rel_err[high_noise]), 1),
                        lam_b[high_noise]))
axes[1].semilogy(lam_b[high_noise], fit, "C1", label=f"slope {highnoise_slope:.2f}")
axes[1].set(xlabel="lambda", title="rho = O(exp(6 lambda)) at high noise")
axes[1].legend(fontsize=8)
save(fig, "b_score_approximation")

# %% [markdown]
# ## (c) NFE saved by analytical teleportation at equal error
#
# Teleportation maps the initial noise $x_1$ to
# $\hat x_{t_s} = \alpha_{t_s}\bar\mu + \sum_k \sqrt{\bar v_k(t_s)/\bar v_k(1)}\;
# \bar u_k \bar u_k^\top (x_1 - \alpha_1\bar\mu)$ with the Gaussian approximation's
# eigen-decomposition (`sd.gaussian.teleport`, no NFE), then runs the solver from $t_s$ with the
# whole budget. Against the mixture's exact PF-ODE flow $\Phi$, its error splits as
#
# $$\|\hat x_0 - \Phi_{1\to0}(x_1)\| \le
#   \underbrace{\|\Phi_{t_s\to0}(\hat x_{t_s}) - \Phi_{t_s\to0}(x_{t_s})\|}_{\text{floor, any NFE}}
#   + \underbrace{\|\hat x_0 - \Phi_{t_s\to 0}(\hat x_{t_s})\|}_{\text{discretisation}}.$$
#
# The floor comes from integrating $s_{\rm G}$ instead of $s_{\rm GMM}$ on $[t_s, 1]$ and grows
# as $t_s$ decreases (part b); the discretisation error shrinks because the solver's logSNR
# grid now spans $[\lambda_{t_s}, \lambda_{t_{\min}}]$ instead of $[\lambda_1, \lambda_{t_{\min}}]$:
# at the same NFE every step is shorter where the trajectory actually bends. Skipping until
# $\rho$ reaches 10% leaves a floor larger than useful targets, so we teleport to the time
# where $\rho(t_s) = 10^{-3}$.
#
# Error = mean distance of the $N$ final points to a float64 reference from the same $x_1$
# (UniPC-3 at many steps, cross-checked with singlestep DPM-Solver-3). Solvers:
# DPM-Solver++(2M) and UniPC-2 with the UniC corrector (Zhao et al. 2023, arXiv 2302.04867),
# both on logSNR grids ending with the denoise step to $t = 0$.

# %%
model_c = gmm.model(proc, "x0")
n_c = 128 if QUICK else 1024
ref_steps = 150 if QUICK else 500
x1_c = gmm.marginal(1.0, proc).sample(n_c, gen(2))
ref = sd.diffusion.sample(model_c, "unipc-3", num_steps=ref_steps, x_init=x1_c).x
ref_check = sd.diffusion.sample(model_c, "dpmsolver-3", num_steps=ref_steps, x_init=x1_c).x
ref_accuracy = (ref - ref_check).norm(dim=-1).mean().item()
print(f"reference: {ref_steps} UniPC-3 steps; distance to DPM-Solver-3: {ref_accuracy:.1e}")


def err(x: torch.Tensor) -> float:
    return (x - ref).norm(dim=-1).mean().item()


def teleported(t_s: float) -> torch.Tensor:
    return sd.gaussian.teleport(x1_c, 1.0, t_s, proc, gauss_approx)


# floor of teleportation at the times where rho crosses 10%, 1%, 0.1%, 0.01%
levels = (1e-1, 1e-2, 1e-3, 1e-4)
floors = {}
for level in levels:
    t_s = crossing(level)
    x_hat = sd.diffusion.sample(model_c, "unipc-3", num_steps=ref_steps, x_init=teleported(t_s),
                                t_start=t_s).x
    floors[level] = (t_s, err(x_hat))
    print(f"rho = {level:.0e} at t_skip = {t_s:.3f}: teleportation floor {floors[level][1]:.1e}")

t_skip = floors[1e-3][0]
floor_skip = floors[1e-3][1]
target_err = 0.02  # data units; the component standard deviations are 0.3-0.6
x_skip = teleported(t_skip)

# %%
nfe_grid = list(range(5, 31))
solvers_c = ("dpmsolver++2m", "unipc-2")
err_base, err_tele, nfe_base, nfe_tele, saving = {}, {}, {}, {}, {}


def nfe_needed(errs: np.ndarray) -> int | None:
    """Smallest NFE of the scan from which the error stays <= target_err."""
    ok = errs <= target_err
    if not ok[-1]:
        return None
    j = len(ok) - 1
    while j > 0 and ok[j - 1]:
        j -= 1
    return nfe_grid[j]


for name in solvers_c:
    err_base[name] = np.array([err(sd.diffusion.sample(model_c, name, nfe=n, x_init=x1_c).x)
                               for n in nfe_grid])
    err_tele[name] = np.array([err(sd.diffusion.sample(model_c, name, nfe=n, x_init=x_skip,
                                                       t_start=t_skip).x) for n in nfe_grid])
    nfe_base[name] = nfe_needed(err_base[name])
    nfe_tele[name] = nfe_needed(err_tele[name])
    saving[name] = 100.0 * (1 - nfe_tele[name] / nfe_base[name])
    print(f"{name:>14}: error <= {target_err} needs NFE {nfe_base[name]} from t = 1, "
          f"{nfe_tele[name]} after teleporting to t = {t_skip:.3f}: {saving[name]:.0f}% saved")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for c, name in enumerate(solvers_c):
    ax.loglog(nfe_grid, err_base[name], f"C{c}-", label=f"{name}, from t = 1")
    ax.loglog(nfe_grid, err_tele[name], f"C{c}--", label=f"{name}, teleported to {t_skip:.2f}")
ax.axhline(target_err, color="0.3", lw=0.8, label="target error")
ax.axhline(floor_skip, color="0.6", ls=":", lw=0.8, label="teleportation floor")
ax.set(xlabel="NFE", ylabel="mean distance to the reference", title="2-D GMM, VP, logSNR grid")
ax.legend(fontsize=7)
save(fig, "c_teleportation_nfe")

# %% [markdown]
# ## Summary
#
# - (a) The closed form and the solvers agree, with the nominal orders 1 (DDIM) and
#   2 (DPM-Solver++(2M)); the PF-ODE of Gaussian data only rescales each principal axis.
# - (b) The Gaussian approximation of a mixture's score is excellent at high noise, with a
#   relative squared error $\rho(t) \approx c\,e^{6\lambda_t}$ as predicted by the cumulant
#   expansion, and fails near the data, crossing 10% around $\lambda \approx -0.4$ here.
# - (c) Teleporting to where $\rho = 10^{-3}$ leaves a floor of about half the target error
#   and cuts the NFE needed to reach the target by roughly 30-40% for both multistep
#   solvers, a little more than the 15-30% Wang & Vastola report on image models.
#   Teleporting further, to where $\rho = 10\%$, leaves a floor several times the target,
#   which no NFE budget removes: the useful skip is set by the error one asks for, not by
#   where the approximation "breaks".

# %%
print("summary:")
print(f"  (a) trajectory error {gauss_traj_err:.1e}; orders "
      + ", ".join(f"{k} {v:.2f}" for k, v in gauss_orders.items()))
print(f"  (b) rho crosses 10% at t = {t_cross:.3f}; high-noise slope {highnoise_slope:.2f}")
print(f"  (c) t_skip = {t_skip:.3f}, floor {floor_skip:.1e}, target {target_err}; saving "
      + ", ".join(f"{k} {v:.0f}%" for k, v in saving.items()))
