"""Resampling throughput: smcdiff vs ``particles`` (numba) vs plain numpy, in one process.

Every implementation starts from the same unnormalized log-weights and returns N ancestor
indices, so normalization (softmax / ``exp_and_normalise``) is part of the timed work
everywhere:

- smcdiff: ``smcdiff.core.resampling.<scheme>(log_w, generator=g)``, log-weights in float32
  and in float64 (one row each); the batch case is one call on ``[64, 16384]``.
- particles 0.4: ``W = exp_and_normalise(lw)`` then ``particles.resampling.<scheme>(W)``;
  its numba kernels are compiled by one untimed call first; the batch case loops over rows.
- numpy: ``searchsorted`` of the points on the normalized cumulative sum (systematic,
  stratified, multinomial) and ``floor`` + ``repeat`` + multinomial rest (residual); no SSP.

Times are medians over ``--repeats`` rounds after one warm-up call; each round calls every
contender once (interleaved), so load changes on a shared machine hit all alike. torch
runs with ``--threads 1`` by default, like the single-threaded numba and numpy peers.
With ``--device cuda`` smcdiff runs on the GPU (synchronized around every call) while the
peers stay on the CPU.
Absolute times on shared machines are noise; the ratio columns of one run are the figure.

Usage::

    python benchmarks/resampling.py --quick          # N <= 1e5 and the batch case
    python benchmarks/resampling.py --repeats 9      # N = 1e3 .. 1e7 and the batch case
    python benchmarks/resampling.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from smcdiff.core.resampling import RESAMPLERS

SCHEMES = ("systematic", "multinomial", "stratified", "residual", "ssp")


# ----------------------------------------------------------------------------- peers


def _load_particles():
    try:
        import particles.resampling as prs
    except ImportError:
        print("particles is not installed (see benchmarks/install_peers.sh); "
              "its column is left empty", file=sys.stderr)
        return None
    return prs


def particles_fn(prs, scheme: str) -> Callable[[np.ndarray], np.ndarray]:
    f = getattr(prs, scheme)

    def run(lw: np.ndarray) -> np.ndarray:
        return f(prs.exp_and_normalise(lw))

    return run


def _np_cdf(lw: np.ndarray) -> np.ndarray:
    w = np.exp(lw - lw.max())
    c = np.cumsum(w)
    c /= c[-1]
    return c


def _np_inverse(c: np.ndarray, points: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(c, points, side="right")
    return np.minimum(idx, c.shape[0] - 1, out=idx)


def numpy_fn(scheme: str, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray] | None:
    if scheme == "systematic":
        def run(lw):
            N = lw.shape[0]
            return _np_inverse(_np_cdf(lw), (rng.random() + np.arange(N)) / N)
    elif scheme == "stratified":
        def run(lw):
            N = lw.shape[0]
            return _np_inverse(_np_cdf(lw), (rng.random(N) + np.arange(N)) / N)
    elif scheme == "multinomial":
        def run(lw):
            return _np_inverse(_np_cdf(lw), rng.random(lw.shape[0]))
    elif scheme == "residual":
        def run(lw):
            N = lw.shape[0]
            w = np.exp(lw - lw.max())
            mw = N * w / w.sum()
            det = np.floor(mw).astype(np.int64)
            rest = N - int(det.sum())
            fixed = np.repeat(np.arange(N), det)
            if rest == 0:
                return fixed
            r = mw - det
            c = np.cumsum(r)
            c /= c[-1]
            return np.concatenate([fixed, _np_inverse(c, rng.random(rest))])
    else:
        return None
    return run


# ----------------------------------------------------------------------------- timing


def median_ms(
    fns: dict[str, tuple[Callable[[], object], Callable[[], None]]], repeats: int
) -> dict[str, float]:
    """Median wall time (ms) of each ``fn``, timed in interleaved rounds.

    ``fns`` maps a name to ``(fn, sync)``. Each round calls every function once, so a
    change of load on a shared machine hits all contenders alike and the ratios stay fair.
    One untimed warm-up call first (numba compilation, allocator, caches).
    """
    for fn, sync in fns.values():
        fn()
        sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, (fn, sync) in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def no_sync() -> None:
    """Peers run on the host: nothing to wait for."""


def check_indices(a, N: int, M: int) -> None:
    n = a.shape[-1]
    lo, hi = int(a.min()), int(a.max())
    if n != M or lo < 0 or hi >= N:
        raise RuntimeError(f"bad ancestors: length {n} (expected {M}), range [{lo}, {hi}]")


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="torch device for smcdiff (cpu, cuda)")
    ap.add_argument("--quick", action="store_true", help="N <= 1e5 and the batch case, 5 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per cell (median)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1, like the single-threaded peers; "
                         "0 keeps torch's default)")
    ap.add_argument("--batch", type=int, default=64, help="runs in the batched case")
    ap.add_argument("--batch-n", type=int, default=16384, help="N in the batched case")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch.cuda.is_available() is False")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else no_sync
    repeats = args.repeats or (5 if args.quick else 9)
    sizes = [10**3, 10**4, 10**5] if args.quick else [10**3, 10**4, 10**5, 10**6, 10**7]

    prs = _load_particles()
    np.random.seed(args.seed)  # noqa: NPY002 - particles draws from numpy's global RNG
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    base = torch.Generator().manual_seed(args.seed + 1)

    print(f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads), "
          f"numpy {np.__version__}, particles {'absent' if prs is None else 'present'}; "
          f"median of {repeats} interleaved rounds, ms; "
          "ratio = peer time / smcdiff time (> 1: smcdiff faster)\n")
    print("| scheme | N | batch | smcdiff dtype | smcdiff ms | particles ms | numpy ms "
          "| particles / smcdiff | numpy / smcdiff |")
    print("|" + " --- |" * 9)

    cases = [(N, 1) for N in sizes] + [(args.batch_n, args.batch)]
    slower: list[str] = []
    for N, B in cases:
        lw64 = torch.randn(B, N, generator=base, dtype=torch.float64)
        lw_np = [row.numpy() for row in lw64]  # peers loop over the batch rows
        for scheme in SCHEMES:
            fns: dict[str, tuple[Callable[[], object], Callable[[], None]]] = {}
            res = RESAMPLERS[scheme]
            for dtype in (torch.float32, torch.float64):
                lw_t = lw64.to(device=device, dtype=dtype)
                if B == 1:
                    lw_t = lw_t[0]
                check_indices(res(lw_t, generator=gen).cpu(), N, N)
                fns[str(dtype).removeprefix("torch.")] = (
                    lambda lw_t=lw_t, res=res: res(lw_t, generator=gen), sync)
            if prs is not None:
                pf = particles_fn(prs, scheme)
                check_indices(pf(lw_np[0]), N, N)
                fns["particles"] = (lambda pf=pf, rows=lw_np: [pf(r) for r in rows], no_sync)
            nf = numpy_fn(scheme, rng)
            if nf is not None:
                check_indices(nf(lw_np[0]), N, N)
                fns["numpy"] = (lambda nf=nf, rows=lw_np: [nf(r) for r in rows], no_sync)
            ms = median_ms(fns, repeats)
            p_ms, n_ms = ms.get("particles"), ms.get("numpy")
            for dt in ("float32", "float64"):
                s_ms = ms[dt]
                rp = None if p_ms is None else p_ms / s_ms
                rn = None if n_ms is None else n_ms / s_ms
                print(f"| {scheme} | {N:.0e} | {B} | {dt} | {s_ms:.3f} | {_fmt(p_ms, '.3f')} "
                      f"| {_fmt(n_ms, '.3f')} | {_fmt(rp, '.2f')} | {_fmt(rn, '.2f')} |",
                      flush=True)
                if p_ms is not None and s_ms > p_ms:
                    slower.append(f"{scheme}, N={N:.0e}, batch={B}, {dt}: smcdiff "
                                  f"{s_ms / p_ms:.2f}x slower than particles "
                                  f"({s_ms:.3f} vs {p_ms:.3f} ms)")
    print()
    if slower:
        print("smcdiff slower than particles:")
        for line in slower:
            print(f"- {line}")
    elif prs is not None:
        print("smcdiff was not slower than particles in any cell.")


if __name__ == "__main__":
    main()
