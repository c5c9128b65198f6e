"""Bootstrap particle filter on the AR(1) linear Gaussian model: smcdiff vs particles vs Pyro.

Model (particle-smoothing note, section 6): ``X_0 ~ N(0, sigma_0^2)``,
``X_t = 0.9 X_{t-1} + U_t``, ``Y_t = X_t + V_t`` (``sigma_x = sigma_y = 1``,
``sigma_0 = 1 / sqrt(1 - 0.81)``), data ``smcdiff.ssm.lgssm_data(1.0)`` (T = 100). Every
library runs the bootstrap filter with systematic resampling when ESS < N / 2 (the default
of ``particles``; ``pyro.infer.SMCFilter`` uses the same rule and systematic resampling).

Two more contenders run the same filter without the engine: "plain torch float32", one
straightforward flat batched torch loop (``make_plain_torch``), and "fused torch float32",
the loop hand-fused for this model (``make_fused_torch``: no event axis, reused buffers, no
checks). They tell the engine's overhead apart from torch's own per-op cost.

Cases: one run at N in {1e2, 1e3, 1e4, 1e5}; B = 64 independent runs of N = 256 and
B = 1000 runs of N = 100 (smcdiff: one batched call; particles: a Python loop over the B
runs; Pyro: ``--pyro-runs`` runs timed and the time extrapolated to B, marked ``*``).

Reported: median wall time over ``--repeats`` rounds in which every contender runs once
(interleaved, so load changes hit all alike; ``time.perf_counter``; CUDA synchronised), and
in the last column the speed-up between the fastest rounds of each (the timeit convention:
the minimum is the time least disturbed by other processes on a shared machine),
particle-steps per second (``B N T / seconds``; smcdiff runs under ``torch.no_grad()``,
as a user who needs no gradients would), mean over runs and rounds
of ``|log Z_hat - log Z_Kalman|``, and the speed-up over particles (particles time / this
time; > 1: faster than particles). smcdiff runs once per ``--dtypes`` entry (float64, the
precision of particles, and float32).
Pyro's ``SMCFilter`` returns no log-evidence: its error is NaN. particles and Pyro run on the
CPU whatever ``--device`` says.

With ``--large`` two cases of N x B >= 1e7 particles are added (one run of N = 1e7, and
B = 100 runs of N = 1e5): the GPU target of the core issue, at least 1e9 particle-steps per
second, is read off their particle-steps/s column. Only smcdiff runs them (speed-up NaN).

    python benchmarks/filtering.py [--device cpu|cuda] [--quick] [--repeats 3] [--threads K]
                                   [--large]
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
import torch
from timing import timed

import smcdiff as sd
from smcdiff.ssm import LinearGaussian, kalman_filter, lgssm_data

RHO, SIGMA_X, SIGMA_Y = 0.9, 1.0, 1.0
SIGMA_0 = SIGMA_X / math.sqrt(1 - RHO**2)


# ----------------------------------------------------------------------------- smcdiff


def make_smcdiff(device: torch.device, dtype: torch.dtype):
    params = [torch.tensor(v, dtype=dtype, device=device) for v in (RHO, SIGMA_X, SIGMA_Y)]
    model = LinearGaussian.ar1(*params)
    y = lgssm_data(SIGMA_Y).y.to(device=device, dtype=dtype)
    fk = model.bootstrap(y)

    @torch.no_grad()  # a filter, not a differentiable one: no autograd bookkeeping
    def run(N: int, B: int, seed: int) -> np.ndarray:
        g = torch.Generator(device=device).manual_seed(seed)
        res = sd.smc(fk, N, batch_shape=(B,) if B > 1 else (), resampling="systematic",
                     resample="adaptive", ess_threshold=0.5, generator=g, progress=False)
        return res.log_z.reshape(-1).double().cpu().numpy()

    return run


# ------------------------------------------------------------------------ plain torch


def make_plain_torch(device: torch.device, dtype: torch.dtype):
    """The same filter written as one flat batched torch loop (no engine, no checks): the
    straightforward eager version, to tell engine overhead from torch's own per-op cost.
    Same resampling (systematic from cumulative offspring counts at ESS < N / 2)."""
    y = lgssm_data(SIGMA_Y).y[:, 0].tolist()

    @torch.inference_mode()
    def run(N: int, B: int, seed: int) -> np.ndarray:
        g = torch.Generator(device=device).manual_seed(seed)
        kw = dict(dtype=dtype, device=device)
        x = SIGMA_0 * torch.randn(B, N, generator=g, **kw)
        c0 = -math.log(SIGMA_Y) - 0.5 * math.log(2 * math.pi)
        lw = c0 - 0.5 * ((y[0] - x) / SIGMA_Y) ** 2
        log_z = torch.zeros(B, dtype=torch.float64, device=device)
        lse_prev = torch.full((B,), math.log(N), dtype=torch.float64, device=device)
        ar = torch.arange(N, device=device)
        for t in range(1, len(y) + 1):
            m = lw.amax(-1, keepdim=True)
            w = torch.exp(lw - m)
            s1 = w.sum(-1)
            lse = (torch.log(s1) + m[:, 0]).double()
            log_z += lse - lse_prev
            if t == len(y):
                break
            flag = s1 * s1 < 0.5 * N * (w * w).sum(-1)
            if bool(flag.any()):
                u = torch.rand(B, 1, generator=g, dtype=torch.float64, device=device)
                c = torch.cumsum(w, -1, dtype=torch.float64)
                cum = torch.addcdiv(-u, c, c[:, -1:], value=N).ceil_().clamp_(0, N).long()
                marks = torch.zeros(B, N + 1, dtype=torch.long, device=device)
                marks.scatter_add_(1, cum, torch.ones_like(cum))
                anc = torch.where(flag[:, None], torch.cumsum(marks[:, :N], -1), ar)
                x = torch.gather(x, 1, anc)
                lw = lw.masked_fill(flag[:, None], 0.0)
                lse_prev = torch.where(flag, math.log(N), lse)
            else:
                lse_prev = lse
            x = RHO * x + SIGMA_X * torch.randn(B, N, generator=g, **kw)
            lw = lw + c0 - 0.5 * ((y[t] - x) / SIGMA_Y) ** 2
        return log_z.cpu().numpy()

    return run


def make_fused_torch(device: torch.device, dtype: torch.dtype):
    """The same filter hand-fused for this model: particles as ``[B, N]`` (no event axis),
    buffers reused across steps (noise, count marks), no degenerate-weight checks, and the
    systematic counts of smcdiff (float64 cumulative weights, ``c (N / c_N) - u``, int32
    counts on the CPU). What eager torch reaches when nothing is general: the gap to the
    smcdiff row is the price of the engine's generality."""
    if SIGMA_X != 1.0:
        raise NotImplementedError("the fused loop is written for sigma_x = 1")
    y = lgssm_data(SIGMA_Y).y[:, 0].tolist()
    c0 = -math.log(SIGMA_Y) - 0.5 * math.log(2 * math.pi)
    half_prec = -0.5 / SIGMA_Y**2
    cnt = torch.int32 if device.type == "cpu" else torch.long

    @torch.inference_mode()
    def run(N: int, B: int, seed: int) -> np.ndarray:
        g = torch.Generator(device=device).manual_seed(seed)
        kw = dict(dtype=dtype, device=device)
        x = torch.randn(B, N, generator=g, **kw).mul_(SIGMA_0)
        noise = torch.empty(B, N, **kw)
        marks = torch.empty(B, N + 1, dtype=cnt, device=device)
        ones = torch.ones(B, N, dtype=cnt, device=device)
        ar = torch.arange(N, device=device)
        d = x - y[0]
        lw = d.mul_(d).mul_(half_prec)  # log G without its constant c0 (added at the end)
        log_z = torch.zeros(B, dtype=torch.float64, device=device)
        lse_prev = torch.full((B,), math.log(N), **kw)
        for t in range(1, len(y) + 1):
            m = lw.amax(-1, keepdim=True)
            w = lw.sub(m).exp_()
            s1 = w.sum(-1)
            lse = s1.log().add_(m.squeeze(-1))
            log_z += lse - lse_prev
            if t == len(y):
                break
            flag = s1.div(torch.linalg.vector_norm(w, dim=-1)).square_() < 0.5 * N
            n = int(flag.count_nonzero())
            if n:
                u = torch.rand(B, 1, generator=g, dtype=torch.float64, device=device)
                c = w.cumsum(-1, dtype=torch.float64)
                pos = torch.mul(c, N / c[:, -1:]).sub_(u.clamp_(2.0**-28, 1 - 2.0**-28))
                marks.zero_()
                marks.scatter_add_(1, pos.ceil_().to(cnt), ones)
                anc = marks[:, :N].cumsum(-1)
                if n < B:
                    anc = torch.where(flag[:, None], anc, ar)
                    lw = lw.masked_fill(flag[:, None], 0.0)
                    lse_prev = lse.masked_fill(flag, math.log(N))
                else:
                    lw = torch.zeros_like(lw)
                    lse_prev = torch.full_like(lse, math.log(N))
                x = torch.gather(x, 1, anc)
            else:
                lse_prev = lse
            x = torch.add(noise.normal_(generator=g), x, alpha=RHO)
            d = x - y[t]
            lw = lw.addcmul(d, d, value=half_prec)
        return (log_z + len(y) * c0).cpu().numpy()

    return run


# --------------------------------------------------------------------------- particles


def make_particles(y: np.ndarray):
    import particles
    from particles import state_space_models as ssms
    from particles.kalman import LinearGauss

    ssm = LinearGauss(rho=RHO, sigmaX=SIGMA_X, sigmaY=SIGMA_Y, sigma0=SIGMA_0)

    def run(N: int, B: int, seed: int) -> np.ndarray:
        np.random.seed(seed)  # noqa: NPY002 (particles draws from NumPy's global RNG)
        out = np.empty(B)
        for b in range(B):
            alg = particles.SMC(fk=ssms.Bootstrap(ssm=ssm, data=y), N=N,
                                resampling="systematic", ESSrmin=0.5, verbose=False)
            alg.run()
            out[b] = alg.logLt
        return out

    return run


# -------------------------------------------------------------------------------- pyro


def make_pyro(y: np.ndarray):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SMCFilter

    pyro.enable_validation(False)  # validation adds checks the other libraries do not make
    yt = torch.as_tensor(y, dtype=torch.float32)

    class Model:
        def init(self, state, y0):
            state["x"] = pyro.sample("x_init", dist.Normal(0.0, SIGMA_0))
            pyro.sample("y_init", dist.Normal(state["x"], SIGMA_Y), obs=y0)

        def step(self, state, y_t):
            state["x"] = pyro.sample("x", dist.Normal(RHO * state["x"], SIGMA_X))
            pyro.sample("y", dist.Normal(state["x"], SIGMA_Y), obs=y_t)

    class Guide:  # the bootstrap proposal: the model's own prior and transition
        def init(self, state, y0):
            pyro.sample("x_init", dist.Normal(0.0, SIGMA_0))

        def step(self, state, y_t):
            pyro.sample("x", dist.Normal(RHO * state["x"], SIGMA_X))

    def run(N: int, B: int, seed: int) -> np.ndarray:
        torch.manual_seed(seed)  # SMCFilter draws from torch's global RNG
        for _ in range(B):
            f = SMCFilter(Model(), Guide(), num_particles=N, max_plate_nesting=0,
                          ess_threshold=0.5)
            f.init(y0=yt[0])
            for t in range(1, len(yt)):
                f.step(y_t=yt[t])
        return np.full(B, np.nan)  # no log-evidence from SMCFilter

    return run


# -------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--dtypes", default="float64,float32",
                    help="smcdiff dtypes, comma-separated (one row each)")
    ap.add_argument("--pyro-runs", type=int, default=2, help="Pyro runs timed per case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--large", action="store_true",
                    help="add N x B >= 1e7 cases (one run of N = 1e7, B = 100 runs of N = 1e5) "
                         "for the GPU throughput target; only smcdiff runs them")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def nosync() -> None:
        pass

    data = lgssm_data(SIGMA_Y)
    y_np = data.y[:, 0].numpy()
    T = len(y_np)
    log_z = float(kalman_filter(LinearGaussian.ar1(RHO, SIGMA_X, SIGMA_Y), data.y).log_z)

    if args.quick:
        cases = [("single", 100, 1), ("single", 1000, 1), ("batch", 64, 4), ("batch", 50, 16)]
    else:
        cases = [("single", n, 1) for n in (100, 1_000, 10_000, 100_000)]
        cases += [("batch", 256, 64), ("batch", 100, 1000)]
    if args.large:
        cases += [("single", 10_000_000, 1), ("batch", 100_000, 100)]

    libs = {
        **{f"smcdiff {d}": (make_smcdiff(device, getattr(torch, d)), sync, str(device))
           for d in dtypes},
        "plain torch float32": (make_plain_torch(device, torch.float32), sync, str(device)),
        "fused torch float32": (make_fused_torch(device, torch.float32), sync, str(device)),
        "particles": (make_particles(y_np), nosync, "cpu"),
        "pyro": (make_pyro(y_np), nosync, "cpu"),
    }
    for run, s, _ in libs.values():  # warm-up: numba compilation, first-call costs
        run(20, 2, args.seed)
        s()

    rows, failures = [], []
    for kind, N, B in cases:
        label = f"N={N}" if kind == "single" else f"B={B} x N={N}"
        # The contenders of one case are timed in interleaved rounds (one call each per
        # round), so that a change of load on a shared machine hits all of them alike.
        active = {name: lib for name, lib in libs.items()
                  if N * B < 10_000_000 or not name.startswith(("particles", "pyro"))}
        times: dict[str, list[float]] = {name: [] for name in active}
        errors: dict[str, list[float]] = {name: [] for name in active}
        failed: dict[str, str] = {}
        for r in range(args.repeats):
            for name, (run, s, _) in active.items():
                if name in failed:
                    continue
                B_run = min(B, args.pyro_runs) if name == "pyro" else B
                try:
                    seconds, lz = timed(lambda _r, run=run, N=N, B_run=B_run, r=r:
                                        run(N, B_run, args.seed + 1000 * r), 1, s)
                except Exception as exc:  # a peer failing is a result, not a reason to stop
                    if name.startswith("smcdiff"):
                        raise
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    continue
                times[name].append(seconds * B / B_run)
                errors[name].extend(np.abs(lz - log_z).tolist())
        case_rows = []
        for name, (_, _, dev) in active.items():
            if name in failed:
                failures.append(f"{name} at {label}: {failed[name]}")
                case_rows.append([label, name, dev, "failed", math.nan, math.nan, math.nan,
                                  math.nan])
                continue
            B_run = min(B, args.pyro_runs) if name == "pyro" else B
            seconds = statistics.median(times[name])
            case_rows.append([label, name, dev, f"{B_run}/{B}" + ("*" if B_run < B else ""),
                              seconds, B * N * T / seconds, float(np.mean(errors[name])),
                              min(times[name])])
        base = next((r[4] for r in case_rows if r[1] == "particles"), math.nan)
        best = next((r[7] for r in case_rows if r[1] == "particles"), math.nan)
        rows += [(*r[:7], base / r[4], best / r[7]) for r in case_rows]

    print(f"# Bootstrap filter, AR(1) linear Gaussian (rho={RHO}, sigma_x={SIGMA_X}, "
          f"sigma_y={SIGMA_Y}), T={T}, systematic resampling at ESS < N/2")
    from importlib.metadata import version

    print(f"torch {torch.__version__} ({torch.get_num_threads()} CPU threads), "
          f"particles {version('particles')}, pyro-ppl {version('pyro-ppl')}; "
          f"median of {args.repeats} interleaved rounds (last column: fastest round of "
          f"each, the least disturbed by other load); Kalman log Z = {log_z:.6f}\n")
    print("| case | library | device | runs timed | seconds | particle-steps/s "
          "| mean abs log Z err | speed-up over particles (particles time / this time) "
          "| speed-up, fastest rounds |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for label, name, dev, runs, sec, rate, err, ratio, best in rows:
        err_s = "NaN" if math.isnan(err) else f"{err:.4f}"
        print(f"| {label} | {name} | {dev} | {runs} | {sec:.4g} | {rate:.3g} | {err_s} "
              f"| {ratio:.3g} | {best:.3g} |")
    for f in failures:
        print(f"\nfailed: {f}")
    print("\n`*`: time measured on the runs shown and extrapolated linearly to all B runs. "
          "Pyro's SMCFilter returns no log-evidence (error NaN); it runs in float32.")


if __name__ == "__main__":
    main()
