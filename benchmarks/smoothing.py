"""Online smoothing of an additive functional: smcdiff vs ``particles`` 0.4 (PaRIS, O(N^2)).

Model (particle-smoothing note, section 6): the AR(1) linear Gaussian model
``LinearGaussian.ar1(0.9, 1, 1)`` with data ``lgssm_data(1.0)`` (T = 100; ``--quick``: the
first 50 observations). Functional ``h = sum_{t<n} x_t x_{t+1}``; the exact smoothed value
comes from the RTS smoother with lag-one covariances.

Both libraries run a bootstrap filter with multinomial resampling at every step
(``particles``: ``ESSrmin=1``) and the same smoothers at the same N and K:

- PaRIS with K backward draws by accept-reject with an exact fallback after N trials
  (``particles.collectors.Paris(Nparis=K)``; smcdiff ``paris(backward=RejectionBackward(
  max_trials=N))`` and with the default adaptive ``max_trials``);
- the O(N^2) forward smoother (``particles.collectors.Online_smooth_ON2``; smcdiff
  ``ffbsm``). On this model smcdiff computes the backward logits in closed form
  (``smcdiff.ssm.backward.row_logits``: one multiply-add per pair); ``ffbsm(generic log_m)``
  runs the same smoother through the model's all-pairs ``log_m``, the path of any other model.

smcdiff also runs the GPU-friendly samplers (IMH, exact chunked) at N up to 1e4.
Reported: median wall time of one run over ``--repeats`` (``time.perf_counter``, CUDA
synchronised); the time per run inside one batched call of ``--batch`` runs; the RMSE of
the estimate over independent runs (``--peer-runs`` runs for ``particles``, the batch for
smcdiff); and speed-up = particles time / smcdiff time (single run, and per run batched).
particles always runs on the CPU in float64; smcdiff in float64 on ``--device``.

    python benchmarks/smoothing.py [--device cpu|cuda] [--quick] [--repeats 3] [--threads K]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from timing import timed

from smcdiff.ssm import LinearGaussian, lgssm_data, rts_smoother
from smcdiff.ssm.backward import ExactBackward, IMHBackward, RejectionBackward
from smcdiff.ssm.linear_gaussian import LinearGaussianBootstrap
from smcdiff.ssm.smoothing import Additive, ffbsm, paris

RHO, SIGMA_X, SIGMA_Y = 0.9, 1.0, 1.0
SIGMA_0 = SIGMA_X / math.sqrt(1 - RHO**2)


def rmse(est: np.ndarray, truth: float) -> float:
    return float(np.sqrt(np.mean((np.asarray(est, dtype=float) - truth) ** 2)))


# ----------------------------------------------------------------------------- smcdiff

H = Additive(lambda t, xp, x: xp * x, lambda x0: torch.zeros_like(x0))  # shape [1]


class GenericLogM(LinearGaussianBootstrap):
    """The same model without its affine Gaussian declaration, so the O(N^2) kernels take
    the generic path (all-pairs ``log_m``)."""

    gaussian_transition = None


def make_smcdiff(T: int, device: torch.device, dtype=torch.float64):
    params = [torch.tensor(v, dtype=dtype, device=device) for v in (RHO, SIGMA_X, SIGMA_Y)]
    model = LinearGaussian.ar1(*params)
    y = lgssm_data(SIGMA_Y, T=T).y.to(device=device, dtype=dtype)
    fk = model.bootstrap(y)
    fk_generic = GenericLogM(model, y)

    @torch.no_grad()  # no parameter needs a gradient here (as benchmarks/filtering.py)
    def run(method: str, N: int, K: int, B: int, seed: int) -> np.ndarray:
        g = torch.Generator(device=device).manual_seed(seed)
        batch = (B,) if B > 1 else ()
        if method in ("ffbsm", "ffbsm(generic log_m)"):
            model = fk if method == "ffbsm" else fk_generic
            est = ffbsm(model, H, N, batch_shape=batch, generator=g)
        else:
            sampler = {
                "paris-rejection(N)": lambda: RejectionBackward(max_trials=N),
                "paris-rejection": RejectionBackward,
                "paris-imh": IMHBackward,
                "paris-exact": ExactBackward,
            }[method]()
            est = paris(fk, H, N, num_backward=K, backward=sampler, batch_shape=batch,
                        generator=g)
        return est.reshape(-1).double().cpu().numpy()

    return run


def exact_value(T: int) -> float:
    model = LinearGaussian.ar1(RHO, SIGMA_X, SIGMA_Y)
    sm = rts_smoother(model, lgssm_data(SIGMA_Y, T=T).y)
    m, C = sm.smoothed_mean[:, 0], sm.lag_one_cov[:, 0, 0]
    return float((C + m[:-1] * m[1:]).sum())


# --------------------------------------------------------------------------- particles


def make_particles(T: int):
    import particles
    from particles import collectors as col
    from particles import state_space_models as ssms
    from particles.kalman import LinearGauss

    class LG(LinearGauss):
        def add_func(self, t, xp, x):  # particles: h~_t(x_{t-1}, x_t); t = 0 gets xp None
            return np.zeros_like(x) if t == 0 else xp * x

        def upper_bound_log_pt(self, t):
            return -0.5 * math.log(2 * math.pi * SIGMA_X**2)

    # particles 0.4's Paris assigns `MultinomialQueue.dequeue(1)` (a length-1 array) to an
    # array element, which NumPy >= 2 rejects; serve single draws as scalars instead (the
    # draws themselves are unchanged).
    from particles import resampling as rs

    class ScalarQueue(rs.MultinomialQueue):
        def dequeue(self, k):
            out = super().dequeue(k)
            return int(out[0]) if k == 1 else out

    col.rs.MultinomialQueue = ScalarQueue

    y = lgssm_data(SIGMA_Y, T=T).y[:, 0].numpy()
    ssm = LG(rho=RHO, sigmaX=SIGMA_X, sigmaY=SIGMA_Y, sigma0=SIGMA_0)

    def run(method: str, N: int, K: int, B: int, seed: int) -> np.ndarray:
        np.random.seed(seed)  # noqa: NPY002 (particles draws from NumPy's global RNG)
        out = np.empty(B)
        for b in range(B):
            c = col.Paris(Nparis=K) if method == "paris" else col.Online_smooth_ON2()
            alg = particles.SMC(fk=ssms.Bootstrap(ssm=ssm, data=y), N=N,
                                resampling="multinomial", ESSrmin=1.0, collect=[c],
                                verbose=False)
            alg.run()
            out[b] = float(np.squeeze(getattr(alg.summaries, c.summary_name)[-1]))
        return out

    return run


# -------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--batch", type=int, default=64, help="smcdiff runs per batched call")
    ap.add_argument("--peer-runs", type=int, default=3, help="particles runs per case")
    ap.add_argument("--K", type=int, default=2, help="PaRIS backward draws")
    ap.add_argument("--no-peer", action="store_true", help="skip particles")
    ap.add_argument("--max-n2", type=int, default=None,
                    help="largest N for the O(N^2) methods in the last table "
                         "(default 3000 on cpu, 1e4 on cuda)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    T = 50 if args.quick else 100
    K = args.K
    repeats = 1 if args.quick else args.repeats
    peer_runs = min(args.peer_runs, 2) if args.quick else args.peer_runs
    batch = min(args.batch, 16) if args.quick else args.batch
    peer_Ns = [100, 300] if args.quick else [100, 1000]
    gpu_Ns = [1000, 3000] if args.quick else [1000, 10_000]
    truth = exact_value(T)
    ours = make_smcdiff(T, device)
    peer = None if args.no_peer else make_particles(T)

    # warm-up (allocator, lazy imports)
    ours("paris-imh", 64, K, 2, 0)

    print(f"\nAR(1) LGSSM, T={T}, h = sum x_t x_(t+1), exact E[h|y] = {truth:.4f}; K={K}; "
          f"smcdiff on {device} (float64), particles on CPU; torch threads "
          f"{torch.get_num_threads()}\n")
    print("| N | method | particles s/run | particles RMSE | smcdiff s/run | "
          f"smcdiff s/run (batch {batch}) | smcdiff RMSE | speed-up (1 run) | "
          "speed-up (batched) |")
    print("|---|---|---|---|---|---|---|---|---|")
    pairs = [("paris", ["paris-rejection(N)", "paris-rejection", "paris-imh"]),
             ("on2", ["ffbsm", "ffbsm(generic log_m)"])]
    for N in peer_Ns:
        for peer_method, our_methods in pairs:
            if peer is not None:
                t_p, first = timed(
                    lambda r, pm=peer_method, N=N: peer(pm, N, K, 1, args.seed + r), 1,
                    lambda: None)
                more = peer(peer_method, N, K, peer_runs - 1, args.seed + 100) \
                    if peer_runs > 1 else np.empty(0)
                err_p = rmse(np.concatenate([first, more]), truth)  # timed run included
            else:
                t_p, err_p = float("nan"), float("nan")
            for m in our_methods:
                t1, _ = timed(lambda r, m=m, N=N: ours(m, N, K, 1, args.seed + r), repeats, sync)
                tb, est = timed(
                    lambda r, m=m, N=N: ours(m, N, K, batch, args.seed + 1000 + r), repeats,
                    sync)
                tb /= batch
                err = rmse(est, truth)
                name = {"paris": f"PaRIS K={K}", "on2": "O(N^2)"}[peer_method]
                print(f"| {N} | {name}: {m} | {t_p:.3g} | {err_p:.3g} | {t1:.3g} | {tb:.3g} | "
                      f"{err:.3g} | {t_p / t1:.1f}x | {t_p / tb:.1f}x |")

    nb = 4
    max_n2 = args.max_n2 if args.max_n2 is not None else (3000 if device.type == "cpu"
                                                           else 10_000)
    print(f"\nGPU-friendly samplers, smcdiff only ({device}); one timed run; RMSE over a "
          f"batch of {nb} runs; O(N^2) methods up to N = {max_n2}\n")
    print("| N | method | s/run | RMSE |")
    print("|---|---|---|---|")
    for N in gpu_Ns:
        for m in ["paris-imh", "paris-rejection", "paris-exact", "ffbsm"]:
            if m in ("paris-exact", "ffbsm") and N > max_n2:
                continue
            t1, _ = timed(lambda r, m=m, N=N: ours(m, N, K, 1, args.seed + r), 1, sync)
            _, est = timed(lambda r, m=m, N=N: ours(m, N, K, nb, args.seed + 2000 + r), 1, sync)
            print(f"| {N} | {m} | {t1:.3g} | {rmse(est, truth):.3g} |")


if __name__ == "__main__":
    main()
