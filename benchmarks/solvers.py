"""Diffusion ODE solvers: smcdiff vs the diffusers schedulers of the same method, exact model.

Methods (smcdiff solver vs diffusers scheduler):

- DPM-Solver++ 2M (midpoint): ``DPMSolverPP2M`` vs ``DPMSolverMultistepScheduler(solver_order=2)``;
- DPM-Solver++ 3M: ``DPMSolverPP3M`` (default ``variant="adaptive"``, order 3) vs
  ``DPMSolverMultistepScheduler(solver_order=3)``; plus a parity row with smcdiff's
  ``variant="compat"`` (the formula diffusers ships, order 2), which should match diffusers
  to round-off;
- UniPC bh2 with the UniC corrector, p = 2 and 3: ``UniPC(p, variant="bh2")`` vs
  ``UniPCMultistepScheduler(solver_order=p, solver_type="bh2")``;
- DEIS (log-rho AB), orders 2 and 3: ``DEIS(order)`` vs ``DEISMultistepScheduler``.

The model (the same for both). Data: a 4-D Gaussian (covariance eigenvalues 0.01, 0.1, 1, 4,
rotated, non-zero mean) or a 2-D four-component Gaussian mixture, under the VP process.
diffusers works on its discrete schedule (1000 training steps, betas linear 1e-4 .. 0.02,
i.e. ``beta_min = 0.1``, ``beta_max = 20`` in continuous time); its ``sigmas`` are
``rho = sigma_t/alpha_t = sqrt((1 - alphas_cumprod)/alphas_cumprod)`` at the scheduler's
timesteps, and its step uses ``alpha = 1/sqrt(1 + rho^2)``, ``sigma = rho alpha``. Each
diffusers step ``i`` therefore sits at ``lambda_i = -log rho_i``; smcdiff runs on the SAME
``lambda`` sequence: grid times ``t_i = process.t_of_log_snr(lambda_i)`` of
``VP(beta_min=0.1, beta_max=20.5)`` (``rho = 0`` -> ``t = 0``). The continuous VP(0.1, 20)
is slightly less noisy at ``t = 1`` (``-log alpha_bar = 10.05``) than diffusers' timestep 999
(10.12), so beta_max 20.5 is used to keep every ``t_i`` inside ``[0, 1]``; this is only a
reparametrisation of time: every solver compared here (and the exact model) depends on the
grid through ``(alpha_i, sigma_i)`` alone, which agree with diffusers' to ~1e-16. The
exact eps-prediction (``smcdiff.gaussian``: ``data.predict(x, t_i, VP, "eps")``) is called
by diffusers at step ``i`` with the same ``t_i``, so the comparison isolates the update
rule. Both start from the same ``x_T``: exact samples of ``p`` at ``rho_0`` (diffusers'
timestep 999), ``x_T = alpha_0 x_0 + sigma_0 z``.

Exact answer. Gaussian: the closed-form PF-ODE map ``Gaussian.pf_ode_solution`` from
``x_T`` to the final ``(alpha, sigma)``. Mixture: an independent float64 reference,
scipy ``solve_ivp`` DOP853 (rtol 1e-12, atol 1e-12) of ``dv/drho = eps_hat`` in
``v = x/alpha``, ``rho = sigma/alpha`` (schedule-free and smooth down to ``rho = 0``:
``eps_hat = sum_k w_k rho (S_k + rho^2 I)^{-1} (v - mu_k)``, ``w_k ∝ pi_k N(v; mu_k, S_k +
rho^2 I)``); the script checks it against the closed form on one component and against
rtol 1e-10 and prints both differences. Error: RMS over samples of the Euclidean distance
to the exact final state (data scale O(1)).

Grids and diffusers' final-step conventions (each chosen so both integrate the same
interval with the same per-step orders):

- ``logsnr->0``: ``use_exponential_sigmas=True`` (uniform in ``lambda`` from timestep 999
  to timestep 0, the same as ``use_lu_lambdas`` for DPM-Solver; ``timestep_spacing`` is then
  irrelevant) and ``final_sigmas_type="zero"``: NFE steps, the last one a denoise to
  ``sigma = 0``, first order in both libraries. This is smcdiff's default grid
  (``time_grid(kind="logsnr", final="zero")``). The first-order denoise step puts a floor
  under the error (about 5e-4 on the Gaussian, reached near NFE 50). Not run for DEIS:
  diffusers' DEIS has no ``final_sigmas_type`` and its exponential/Karras sigmas repeat the
  last sigma (a zero-length step that wastes one NFE).
- ``linspace->smin``: diffusers' default ``timestep_spacing="linspace"`` (integer timesteps
  999 .. ~999/NFE) and ``final_sigmas_type="sigma_min"`` (last sigma = timestep 0's,
  ``rho ~ 0.01``); smcdiff ends at that same ``t`` (like ``final="t_min"``): no denoise
  step, every step a regular one.
- ``lower_order_final``: diffusers' DPM-Solver and DEIS lower the last orders only below
  15 steps, smcdiff's flag lowers them always, so both sides use ``False`` for DPM-Solver++
  and DEIS (``final_sigmas_type="zero"`` still makes diffusers' last step first order, as
  smcdiff's denoise step is). diffusers' UniPC lowers the orders at the end whenever the
  flag is on (as smcdiff's does) and needs it with ``final_sigmas_type="zero"`` (otherwise
  its last step divides by ``r = 0`` and fails), so UniPC uses ``True`` on both sides for
  ``logsnr->0`` and ``False`` on both for ``linspace->smin``.
- float64: diffusers builds betas in float32 and ``set_timesteps`` stores ``sigmas`` as
  float32 values; the script casts ``scheduler.sigmas`` to float64 after ``set_timesteps``
  (the grid is those values, on both sides) and passes float64 samples and model outputs,
  so all coefficients are float64. Exception: ``DPMSolverMultistepScheduler.step`` casts
  the sample to float32 every step (``sample = sample.to(torch.float32)``), which gives
  diffusers' DPM-Solver++ a round-off floor near 1e-7.

Per-step overhead: wall time of a whole sampling call (diffusers: ``set_timesteps`` + the
loop of ``step``; smcdiff: ``sample(model, solver, grid=..., x_init=...)``, which includes
grid preparation and the finiteness checks of ``DiffusionModel`` / the evaluator, as a user
gets them) with a trivially cheap model (returns a fixed tensor), divided by the number of
steps; median of ``--repeats`` rounds in which the two are called alternately. Same batch
(``--samples`` points) and dtype as the error runs.

Columns: errors of both, their ratio (< 1: smcdiff more accurate), the largest absolute
difference between the two final samples (round-off where the update rules coincide), the
per-step times and their ratio (< 1: smcdiff cheaper). The notes after the table give the
reference checks and list every cell where smcdiff has the larger error or per-step time.

    python benchmarks/solvers.py [--device cpu|cuda] [--quick] [--repeats 15] [--threads 1]
                                 [--samples 2000] [--dtype float64] [--timer wall|cpu]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp

import smcdiff.diffusion as sdd
from smcdiff.gaussian import Gaussian, GaussianMixture

TRAIN = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
PROCESS = sdd.VP(beta_min=0.1, beta_max=20.5)
NFES = (5, 10, 20, 50)
GRIDS = {
    "logsnr->0": dict(use_exponential_sigmas=True, final_sigmas_type="zero"),
    "linspace->smin": dict(timestep_spacing="linspace", final_sigmas_type="sigma_min"),
}


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    name: str
    smcdiff: Callable[[bool], sdd.Solver]  # lower_order_final -> solver
    scheduler: str  # diffusers class name
    kwargs: dict[str, Any]
    lower_order_final: dict[str, bool]  # per grid; the grids it runs on


METHODS = (
    Method("DPM++2M", lambda lof: sdd.DPMSolverPP2M(lower_order_final=lof),
           "DPMSolverMultistepScheduler",
           dict(solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint"),
           {"logsnr->0": False, "linspace->smin": False}),
    Method("DPM++3M", lambda lof: sdd.DPMSolverPP3M(lower_order_final=lof),
           "DPMSolverMultistepScheduler",
           dict(solver_order=3, algorithm_type="dpmsolver++", solver_type="midpoint"),
           {"logsnr->0": False, "linspace->smin": False}),
    Method("DPM++3M compat", lambda lof: sdd.DPMSolverPP3M(variant="compat", lower_order_final=lof),
           "DPMSolverMultistepScheduler",
           dict(solver_order=3, algorithm_type="dpmsolver++", solver_type="midpoint"),
           {"logsnr->0": False, "linspace->smin": False}),
    Method("UniPC-2 bh2", lambda lof: sdd.UniPC(p=2, variant="bh2", lower_order_final=lof),
           "UniPCMultistepScheduler",
           dict(solver_order=2, solver_type="bh2", predict_x0=True, disable_corrector=[]),
           {"logsnr->0": True, "linspace->smin": False}),
    Method("UniPC-3 bh2", lambda lof: sdd.UniPC(p=3, variant="bh2", lower_order_final=lof),
           "UniPCMultistepScheduler",
           dict(solver_order=3, solver_type="bh2", predict_x0=True, disable_corrector=[]),
           {"logsnr->0": True, "linspace->smin": False}),
    Method("DEIS-2", lambda lof: sdd.DEIS(order=2, lower_order_final=lof),
           "DEISMultistepScheduler",
           dict(solver_order=2, algorithm_type="deis", solver_type="logrho"),
           {"linspace->smin": False}),
    Method("DEIS-3", lambda lof: sdd.DEIS(order=3, lower_order_final=lof),
           "DEISMultistepScheduler",
           dict(solver_order=3, algorithm_type="deis", solver_type="logrho"),
           {"linspace->smin": False}),
)


def make_scheduler(method: Method, grid: str):
    import diffusers

    cls = getattr(diffusers, method.scheduler)
    kw = dict(TRAIN, **method.kwargs, lower_order_final=method.lower_order_final[grid])
    g = dict(GRIDS[grid])
    if method.scheduler == "DEISMultistepScheduler":
        g.pop("final_sigmas_type")  # DEIS: always timestep 0's sigma at the end
    return cls(**kw, **g)


def set_schedule(sched, nfe: int, dtype: torch.dtype) -> torch.Tensor:
    """``set_timesteps(nfe)``, sigmas (``rho``) cast to ``dtype``; returns them (float64)."""
    sched.set_timesteps(nfe)
    if len(sched.timesteps) != nfe:
        raise RuntimeError(f"{type(sched).__name__}: {len(sched.timesteps)} timesteps for {nfe}")
    sched.sigmas = sched.sigmas.to(dtype)
    return sched.sigmas.to(torch.float64)


def grid_from_rho(rho: torch.Tensor) -> torch.Tensor:
    """smcdiff times ``t_i`` with ``lambda(t_i) = -log rho_i`` (``rho = 0`` -> ``t = 0``)."""
    lam = -torch.log(rho.clamp_min(1e-300))
    t = PROCESS.t_of_log_snr(lam).to(torch.float64)
    t = torch.where(rho == 0, torch.zeros_like(t), t)
    if not (bool((t[1:] < t[:-1]).all()) and 0 <= float(t[-1]) and float(t[0]) <= 1):
        raise RuntimeError(f"grid is not strictly decreasing in [0, 1]: {t.tolist()}")
    return t


def run_diffusers(sched, nfe: int, dtype, x: torch.Tensor, eps_at: Callable) -> torch.Tensor:
    """Sampling loop of a diffusers pipeline; ``eps_at(x, i)`` is the model at step ``i``."""
    set_schedule(sched, nfe, dtype)
    for i, k in enumerate(sched.timesteps):
        x = sched.step(eps_at(x, i), k, x).prev_sample
    return x


# ----------------------------------------------------------------------------- targets


def make_targets(device, dtype):
    kw = dict(device=device, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.tensor([[1.0, 0.3, -0.2, 0.5], [0.2, 1.0, 0.4, -0.1],
                                         [-0.3, 0.1, 1.0, 0.2], [0.4, -0.5, 0.3, 1.0]], **kw))
    cov = q @ torch.diag(torch.tensor([0.01, 0.1, 1.0, 4.0], **kw)) @ q.T
    gauss = Gaussian(torch.tensor([0.5, -1.0, 0.25, 1.5], **kw).to(dtype), cov.to(dtype))

    def c(s1, s2, r):
        return [[s1 * s1, r * s1 * s2], [r * s1 * s2, s2 * s2]]

    gmm = GaussianMixture(
        torch.tensor([0.3, 0.2, 0.25, 0.25], **kw).to(dtype),
        torch.tensor([[-2.0, -1.0], [2.0, -1.5], [0.0, 2.5], [1.5, 1.0]], **kw).to(dtype),
        torch.tensor([c(0.4, 0.2, 0.5), c(0.3, 0.5, -0.3), c(0.6, 0.15, 0.0),
                      c(0.1, 0.3, 0.8)], **kw).to(dtype),
    )
    return {"gauss-4d": gauss, "gmm-2d": gmm}


class MixtureODE:
    """float64 reference PF-ODE of a Gaussian mixture in ``v = x/alpha``, ``rho = sigma/alpha``.

    ``dv/drho = eps_hat = sum_k w_k(v, rho) rho (S_k + rho^2 I)^{-1} (v - mu_k)`` with
    ``w_k ∝ pi_k N(v; mu_k, S_k + rho^2 I)`` (``x = alpha v``, ``C_{t,k} = alpha^2 (S_k +
    rho^2 I)``); solved by scipy DOP853 for all points at once.
    """

    def __init__(self, log_w, means, covs):
        self.log_w = np.asarray(log_w, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        lam, U = np.linalg.eigh(np.asarray(covs, dtype=np.float64))
        self.lam, self.U = lam, U  # [K, d], [K, d, d]

    def rhs(self, rho: float, y: np.ndarray) -> np.ndarray:
        K, d = self.means.shape
        v = y.reshape(-1, d)
        z = np.einsum("nki,kij->nkj", v[:, None, :] - self.means[None], self.U)  # [n, K, d]
        var = self.lam + rho * rho  # [K, d]
        lp = self.log_w - 0.5 * ((z * z / var).sum(-1) + np.log(var).sum(-1))
        lp -= lp.max(-1, keepdims=True)
        w = np.exp(lp)
        w /= w.sum(-1, keepdims=True)
        eps = np.einsum("nkj,kij->ni", w[..., None] * rho * z / var, self.U)
        return eps.reshape(-1)

    def solve(self, x_T: np.ndarray, rho0: float, rho1: float, rtol: float = 1e-12) -> np.ndarray:
        a0 = 1.0 / math.sqrt(1.0 + rho0 * rho0)
        a1 = 1.0 / math.sqrt(1.0 + rho1 * rho1)
        sol = solve_ivp(self.rhs, (rho0, rho1), (x_T / a0).reshape(-1), method="DOP853",
                        rtol=rtol, atol=rtol)
        if not sol.success:
            raise RuntimeError(f"reference ODE failed: {sol.message}")
        return a1 * sol.y[:, -1].reshape(x_T.shape)


class Exact:
    """Exact final states from ``x_T`` at ``rho0`` to ``rho1``, cached per interval."""

    def __init__(self, data):
        self.data = data
        self.cache: dict[tuple[float, float], torch.Tensor] = {}
        if isinstance(data, Gaussian):
            self.ode = None
        else:
            self.ode = MixtureODE(data.log_weights.double().cpu(), data.means.double().cpu(),
                                  data.covs.double().cpu())

    def __call__(self, x_T: torch.Tensor, t: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        key = (float(rho[0]), float(rho[-1]))
        if key not in self.cache:
            if self.ode is None:
                ref = self.data.pf_ode_solution(x_T.double(), t[0], t[-1],
                                                PROCESS)
            else:
                ref = torch.from_numpy(self.ode.solve(x_T.double().cpu().numpy(), *key))
            self.cache[key] = ref.to(device=x_T.device, dtype=torch.float64)
        return self.cache[key]


def rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x.double() - ref) ** 2).sum(-1).mean().sqrt())


def reference_checks(targets, device, n: int = 256) -> list[str]:
    """The mixture reference ODE on a one-component 'mixture' vs the closed form; and
    the rtol 1e-12 reference against rtol 1e-10 on the mixture."""
    gauss, gmm = targets["gauss-4d"], targets["gmm-2d"]
    gen = torch.Generator(device=device).manual_seed(1)
    rho0 = 157.4
    t0 = grid_from_rho(torch.tensor([rho0, 0.01], dtype=torch.float64))
    lines = []
    for name, data in (("gauss-4d", gauss), ("gmm-2d", gmm)):
        x0 = data.sample(n, generator=gen)
        a0 = 1 / math.sqrt(1 + rho0**2)
        x_T = a0 * x0 + rho0 * a0 * torch.randn(x0.shape, generator=gen, device=device,
                                                dtype=x0.dtype)
        if name == "gauss-4d":
            ode = MixtureODE(np.zeros(1), gauss.mean.double().cpu()[None],
                             gauss.cov.double().cpu()[None])
            for rho1, t1 in ((0.01, t0[1]), (0.0, torch.tensor(0.0, dtype=torch.float64))):
                ref = ode.solve(x_T.double().cpu().numpy(), rho0, rho1)
                exact = gauss.pf_ode_solution(x_T.double(), t0[0], t1, PROCESS).cpu().numpy()
                lines.append(f"reference ODE (DOP853, rtol 1e-12) vs closed form, Gaussian, "
                             f"rho {rho0} -> {rho1}: max |diff| = {np.abs(ref - exact).max():.1e}")
        else:
            ode = MixtureODE(gmm.log_weights.double().cpu(), gmm.means.double().cpu(),
                             gmm.covs.double().cpu())
            for rho1 in (0.01, 0.0):
                a = ode.solve(x_T.double().cpu().numpy(), rho0, rho1, rtol=1e-12)
                b = ode.solve(x_T.double().cpu().numpy(), rho0, rho1, rtol=1e-10)
                lines.append(f"reference ODE, mixture, rho {rho0} -> {rho1}: rtol 1e-12 vs "
                             f"1e-10 max |diff| = {np.abs(a - b).max():.1e}")
    return lines


# ----------------------------------------------------------------------------- benchmark


def sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--quick", action="store_true",
                    help="NFE 5 and 20 only, 256 samples, 3 timing rounds")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timing rounds per cell (default 15; 3 with --quick)")
    ap.add_argument("--timer", default="wall", choices=("wall", "cpu"),
                    help="wall: time.perf_counter (default); cpu: time.process_time, this "
                         "process's CPU time, steadier on a shared CPU (not for --device cuda)")
    ap.add_argument("--samples", type=int, default=None,
                    help="points per run (default 2000; 256 with --quick)")
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats or (3 if args.quick else 15)
    if args.timer == "cpu" and device.type == "cuda":
        raise SystemExit("--timer cpu measures host CPU time only; use --timer wall with cuda")
    clock = time.perf_counter if args.timer == "wall" else time.process_time
    n = args.samples or (256 if args.quick else 2000)
    nfes = (5, 20) if args.quick else NFES
    sync = sync_fn(device)
    warnings.filterwarnings("ignore", category=FutureWarning)

    targets = make_targets(device, dtype)
    t_start = time.perf_counter()
    notes = reference_checks(targets, device)

    # Same x_0 and z for every run of a target; x_T depends on rho_0 only (timestep 999).
    gen = torch.Generator(device=device).manual_seed(args.seed)
    base = {name: (d.sample(n, generator=gen),
                   torch.randn((n, d.dim), generator=gen, device=device, dtype=dtype))
            for name, d in targets.items()}
    exact = {name: Exact(d) for name, d in targets.items()}
    models = {name: d.model(PROCESS, "eps") for name, d in targets.items()}

    rows = []
    for grid in GRIDS:
        for m in METHODS:
            if grid not in m.lower_order_final:
                continue
            solver = m.smcdiff(m.lower_order_final[grid])
            sched = make_scheduler(m, grid)
            for nfe in nfes:
                rho = set_schedule(sched, nfe, dtype)
                t = grid_from_rho(rho)
                errs = {}
                for name, data in targets.items():
                    x0, z = base[name]
                    a0 = 1.0 / math.sqrt(1.0 + float(rho[0]) ** 2)
                    x_T = a0 * x0 + float(rho[0]) * a0 * z
                    ref = exact[name](x_T, t, rho)
                    res = sdd.sample(models[name], solver, grid=t, x_init=x_T)
                    if res.nfe != nfe:
                        raise RuntimeError(f"smcdiff {m.name}: {res.nfe} NFE, expected {nfe}")
                    ts = t.to(device=device, dtype=dtype)

                    def eps_at(x, i, data=data, ts=ts):
                        return data.predict(x, ts[i], PROCESS, "eps")

                    x_d = run_diffusers(sched, nfe, dtype, x_T, eps_at)
                    diff = float((res.x.double() - x_d.double()).abs().max())
                    errs[name] = (rms(res.x, ref), rms(x_d, ref), diff)

                # overhead: trivially cheap model (a fixed tensor), alternating calls
                x_T = targets["gauss-4d"].sample(n, generator=gen)
                fixed = 0.1 * torch.randn(x_T.shape, generator=gen, device=device, dtype=dtype)
                cheap = sdd.DiffusionModel(lambda x, tt, fixed=fixed: fixed, PROCESS, "eps")

                def run_s(cheap=cheap, solver=solver, t=t, x_T=x_T):
                    return sdd.sample(cheap, solver, grid=t, x_init=x_T).x

                def run_d(sched=sched, nfe=nfe, x_T=x_T, fixed=fixed):
                    return run_diffusers(sched, nfe, dtype, x_T, lambda x, i: fixed)

                times: dict[str, list[float]] = {"s": [], "d": []}
                for r in range(repeats + 1):  # round 0 warms up
                    for key, fn in (("s", run_s), ("d", run_d)) if r % 2 == 0 else \
                            (("d", run_d), ("s", run_s)):
                        sync()
                        t0 = clock()
                        fn()
                        sync()
                        if r > 0:
                            times[key].append(clock() - t0)
                us_s = statistics.median(times["s"]) / nfe * 1e6
                us_d = statistics.median(times["d"]) / nfe * 1e6
                for name in targets:
                    e_s, e_d, diff = errs[name]
                    rows.append((name, grid, m.name, nfe, e_s, e_d, diff, us_s, us_d))

    rows.sort(key=lambda r: (list(targets).index(r[0]), list(GRIDS).index(r[1])))
    print(f"\nsmcdiff vs diffusers ODE solvers: exact eps model, VP linear betas, {n} points, "
          f"{args.dtype}, device {device}, {args.timer} time, median of {repeats} rounds, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| target | grid | method | NFE | err smcdiff | err diffusers | err s/d "
          "| max abs s-d | us/step smcdiff | us/step diffusers | time s/d |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, grid, meth, nfe, e_s, e_d, diff, us_s, us_d in rows:
        print(f"| {name} | {grid} | {meth} | {nfe} | {e_s:.3e} | {e_d:.3e} | {e_s / e_d:.3f} "
              f"| {diff:.1e} | {us_s:.0f} | {us_d:.0f} | {us_s / us_d:.2f} |")
    print()
    for line in notes:
        print("- " + line)
    worse = [r for r in rows if r[4] > r[5] * (1 + 1e-3)]
    slower = {(r[1], r[2], r[3]): r[7] / r[8] for r in rows if r[7] > r[8]}
    print(f"- cells where smcdiff's error exceeds diffusers' by > 0.1%: {len(worse)}")
    for r in worse:
        print(f"  - {r[0]} {r[1]} {r[2]} NFE {r[3]}: {r[4]:.3e} vs {r[5]:.3e} "
              f"(x{r[4] / r[5]:.3f})")
    print(f"- (grid, method, NFE) where smcdiff's per-step time exceeds diffusers': {len(slower)}")
    for (g, meth, nfe), ratio in slower.items():
        print(f"  - {g} {meth} NFE {nfe}: x{ratio:.2f}")
    print(f"- wall time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
