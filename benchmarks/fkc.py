"""Feynman-Kac correctors against the uncorrected SDE and best-of-N, on exact targets.

Every target has a closed form (``smcdiff.gaussian.targets``; notes
``feynman-kac-correctors.md`` §8), all under the VP process in ``d = 2``:

==================  ================================================  ===================
target              unnormalized ``p~`` at the last grid time ``t_K``  error reported
==================  ================================================  ===================
``gmm-anneal-2``    ``p^2``, ``p`` a 3-mode mixture (narrow / wide /   mode-mass TV
                    tilted modes, weights .3/.4/.3; ``power``)
``gauss-anneal-2``  ``N(m, S)^2`` (``power``)                          W2
``gauss-anneal-.5`` ``N(m, S)^0.5``                                    W2
``gauss-product``   ``N(m1, S1) N(m2, S2)`` (``product``)              W2
``gauss-cfg-2``     ``q_u^{-1} q_c^2`` (CFG, ``w = 2``; ``cfg``)       W2
``gauss-tilt``      ``N(m, S) exp(a.x)`` (``linear_tilt``)             W2
==================  ================================================  ===================

(each law noised to ``t_K`` first, so the reference is the exact target of the grid the
sampler runs on; ``t_K = process.t_min = 1e-3``).

Errors.

- *W2* (Gaussian targets): the 2-Wasserstein distance between the Gaussian with the run's
  weighted particle mean and covariance and the exact target ``N(m*, C*)``:
  ``W2^2 = |m - m*|^2 + tr C + tr C* - 2 tr (C*^{1/2} C C*^{1/2})^{1/2}``. It measures the
  first two moments only (which determine a Gaussian) and includes the Monte Carlo error
  of the run, so it decreases like ``1/sqrt(ESS)`` until the time-discretisation bias.
- *mode-mass TV* (mixture): ``1/2 sum_k |m_k - m*_k|`` over the Voronoi cells of the three
  component means of ``p``; ``m*_k`` integrates the closed-form density of ``p^2``
  (a 6-component mixture) over each cell by quadrature on a 601 x 601 grid over
  ``[-7, 7]^2`` (quadrature error far below the Monte Carlo error: the normalized density
  integrates to 1 within 1e-12 on that grid, printed when the script starts).
- *|d log Z|*: ``|log Z_hat - log Z|`` with ``log Z = log int p~`` from the closed form.
  Every run starts from the exact normalized ``p~_{t_0}`` with ``init_log_z = log Z_{t_0}``
  (FKC's ``log_z`` then estimates ``log Z_{t_K}``), so the error is the SMC's own:
  Monte Carlo plus the ``O(Delta)`` Euler bias.

Each cell is the mean over ``--repeats`` independent runs (one batched call per method).

Methods, at equal budget (same N, same grid, same network evaluations per particle: one
per expert per step; for the reward tilt the reward gradient is free here):

- **FKC**: the weighted SDE (target-score SDE, ``zeta = 1``) run by ``smcdiff.smc`` with
  systematic resampling when the ESS drops below N/2;
- **uncorrected**: the same proposal (the same drift ``-f x + g^2 S`` with the tilted /
  combined score) with the weights ignored: ``resample="never"`` and equal weights;
- **best-of-N / IS** (reward tilt only): N independent draws of the *untilted* base sampler
  (the same Euler-Maruyama SDE with the model's own score, ``beta = 1``) reweighted at the
  end by ``exp(r(x))``: the tilt's importance sampler, whose ``log Z_hat = log mean_i
  exp(r(x_i))``. (Plain best-of-N, returning the highest-reward draw, samples no fixed
  target, so it has no W2 to report; weighting the N draws by the reward is its unbiased
  version.) For annealing, products and CFG the analogous weight (e.g. ``p(x)^{beta-1}``)
  needs the model's density, which a diffusion model does not provide: ``n/a``.

Columns: target, N, steps, NFE per particle; the error of FKC, uncorrected and best-of-N;
``FKC/unc`` (below 1: the correction helps); ``|d log Z|`` of FKC and of best-of-N; FKC's
smallest ESS / N over the run (mean over repeats); wall seconds for the cell (all methods).

    python benchmarks/fkc.py --quick          # N in {256, 1024}, steps in {25, 100}, 2 repeats
    python benchmarks/fkc.py                  # N in {256, 1024, 4096} x steps in {25, .., 200}
    python benchmarks/fkc.py --device cuda --repeats 8
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import smcdiff as sd
from smcdiff.diffusion import VP, time_grid
from smcdiff.fk import RewardTilt, WeightedSDE, anneal, cfg, product
from smcdiff.gaussian import Gaussian, GaussianMixture
from smcdiff.gaussian import targets as gt

F64 = torch.float64
PROC = VP()


# --------------------------------------------------------------------------- metrics


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of PSD matrices ``[..., d, d]``."""
    lam, u = torch.linalg.eigh(0.5 * (c + c.transpose(-1, -2)))
    return (u * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ u.transpose(-1, -2)


def w2_gaussian(m: torch.Tensor, c: torch.Tensor, m_ref: torch.Tensor,
                c_ref: torch.Tensor) -> torch.Tensor:
    """W2 between ``N(m, c)`` (batched ``[R, d]``, ``[R, d, d]``) and ``N(m_ref, c_ref)``."""
    r = _sqrtm_psd(c_ref)
    cross = _sqrtm_psd(r @ c @ r)
    tr = lambda a: torch.diagonal(a, dim1=-2, dim2=-1).sum(-1)
    w2sq = ((m - m_ref) ** 2).sum(-1) + tr(c) + tr(c_ref) - 2 * tr(cross)
    return w2sq.clamp_min(0).sqrt()


def weighted_moments(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean ``[R, d]`` and covariance ``[R, d, d]`` of ``x [R, N, d]``, ``w [R, N]``."""
    m = (w.unsqueeze(-1) * x).sum(-2)
    xc = x - m.unsqueeze(-2)
    return m, torch.einsum("rn,rni,rnj->rij", w, xc, xc)


def ess_fraction(log_w: torch.Tensor) -> torch.Tensor:
    return sd.ess(log_w) / log_w.shape[-1]


# --------------------------------------------------------------------------- targets


def _g(mean, cov, device) -> Gaussian:
    return Gaussian(torch.tensor(mean, dtype=F64, device=device),
                    torch.tensor(cov, dtype=F64, device=device))


def _mixture(device) -> GaussianMixture:
    eye = torch.eye(2, dtype=F64)
    return GaussianMixture(
        torch.tensor([0.3, 0.4, 0.3], dtype=F64, device=device),
        torch.tensor([[-2.5, 1.0], [1.5, 1.5], [0.5, -2.0]], dtype=F64, device=device),
        torch.stack([0.1 * eye, 0.8 * eye,
                     torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=F64)]).to(device),
    )


@dataclass
class Target:
    """A benchmark target: ``exact(t, at_start) -> TiltedTarget`` (normalized law and
    ``log Z``) of the unnormalized path at diffusion time ``t`` (``at_start``: ``t`` is the
    grid's first time, where a reward tilt's schedule is 0); ``build(**kw) -> WeightedSDE``
    (FKC); ``base(**kw)`` the untilted sampler and ``log_weight(x)`` its final importance
    weight (best-of-N; ``None`` = not applicable)."""

    name: str
    metric: str  # "W2" or "mode TV"
    exact: Callable[[float, bool], gt.TiltedTarget]
    build: Callable[..., WeightedSDE]
    base: Callable[..., WeightedSDE] | None = None
    log_weight: Callable[[torch.Tensor], torch.Tensor] | None = None
    modes: torch.Tensor | None = None  # cell centres for the mode-mass TV


def make_targets(device: str) -> list[Target]:
    g1 = _g([1.0, -0.5], [[1.0, 0.3], [0.3, 0.5]], device)
    g2 = _g([-0.5, 1.0], [[0.6, -0.2], [-0.2, 0.8]], device)
    gu = _g([0.0, 0.0], [[2.0, 0.3], [0.3, 1.5]], device)
    gc = _g([1.0, -1.0], [[0.5, 0.1], [0.1, 0.4]], device)
    mix = _mixture(device)
    a = torch.tensor([0.8, -0.6], dtype=F64, device=device)
    lam = 1.0

    def tilt_exact(t: float, at_start: bool) -> gt.TiltedTarget:
        # the schedule is LinearSchedule(lam, t_0, t_K): 0 at t_0 (the untilted marginal,
        # Z = 1), lam at t_K; the benchmark evaluates the path only at those two times
        marg = g1.marginal(t, PROC)
        if at_start:
            return gt.TiltedTarget(marg, torch.zeros((), dtype=F64, device=device))
        return gt.linear_tilt(marg, a * lam, 1.0)

    def tilt_build(grid, **kw):
        t0, tk = float(grid[0]), float(grid[-1])
        sched = sd.fk.LinearSchedule(lam, t0, tk)
        return WeightedSDE([g1.model(PROC, "eps")], [1.0], grid=grid,
                           tilt=RewardTilt(lambda x: x @ a, lam, sched), **kw)

    return [
        Target("gmm-anneal-2", "mode TV", lambda t, _: gt.power(mix.marginal(t, PROC), 2),
               lambda **kw: anneal(mix.model(PROC, "eps"), 2.0, **kw), modes=mix.means),
        Target("gauss-anneal-2", "W2", lambda t, _: gt.power(g1.marginal(t, PROC), 2.0),
               lambda **kw: anneal(g1.model(PROC, "eps"), 2.0, **kw)),
        Target("gauss-anneal-0.5", "W2", lambda t, _: gt.power(g1.marginal(t, PROC), 0.5),
               lambda **kw: anneal(g1.model(PROC, "x0"), 0.5, **kw)),
        Target("gauss-product", "W2",
               lambda t, _: gt.product(g1.marginal(t, PROC), g2.marginal(t, PROC)),
               lambda **kw: product([g1.model(PROC, "eps"), g2.model(PROC, "velocity")], **kw)),
        Target("gauss-cfg-2", "W2",
               lambda t, _: gt.cfg(gu.marginal(t, PROC), gc.marginal(t, PROC), 2.0),
               lambda **kw: cfg(gu.model(PROC, "score"), gc.model(PROC, "eps"), 2.0, **kw)),
        Target("gauss-tilt", "W2", tilt_exact, tilt_build,
               base=lambda **kw: WeightedSDE([g1.model(PROC, "eps")], [1.0], **kw),
               log_weight=lambda x: lam * (x @ a)),
    ]


def exact_at(target: Target, t: float, at_start: bool = False) -> tuple[Any, float]:
    """(normalized law, log Z) of the target path at diffusion time ``t``."""
    tt = target.exact(t, at_start)
    return tt.distribution, float(tt.log_z)


# --------------------------------------------------------------------------- mode masses


class ModeMasses:
    """Exact Voronoi-cell masses of a 2-D mixture by quadrature (midpoint rule)."""

    def __init__(self, law: GaussianMixture, centres: torch.Tensor, half_width: float = 7.0,
                 n: int = 601) -> None:
        u = torch.linspace(-half_width, half_width, n, dtype=F64)
        pts = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 2)
        self.centres = centres.detach().to("cpu", F64)
        log_p = law.log_prob(pts.to(law.device)).cpu()
        quad = float(torch.logsumexp(log_p, 0)) + 2 * math.log(float(u[1] - u[0]))
        self.quadrature_error = abs(quad)  # the law is normalized: its integral is 1
        self.exact = self.masses(pts.unsqueeze(0), torch.softmax(log_p, 0).unsqueeze(0))[0]

    def masses(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        cell = ((x.unsqueeze(-2) - self.centres) ** 2).sum(-1).argmin(-1)
        onehot = torch.nn.functional.one_hot(cell, self.centres.shape[0]).to(F64)
        return (w.unsqueeze(-1) * onehot).sum(-2)

    def tv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.masses(x, w) - self.exact).abs().sum(-1)


# --------------------------------------------------------------------------- one cell


def run_cell(target: Target, N: int, steps: int, repeats: int, seed: int,
             device: str) -> dict[str, Any]:
    grid = time_grid(PROC, steps, kind="uniform", final="t_min")
    t0, tk = float(grid[0]), float(grid[-1])
    start, log_z0 = exact_at(target, t0, at_start=True)
    law, log_z = exact_at(target, tk)
    kw = dict(grid=grid, init=start, init_log_z=log_z0, device=device)
    model = target.build(**kw)
    gen = torch.Generator(device=device).manual_seed(seed)

    if target.metric == "W2":
        m_ref, c_ref = law.mean.cpu(), law.cov.cpu()

        def error(x, w):
            m, c = weighted_moments(x, w)
            return w2_gaussian(m, c, m_ref, c_ref)
    else:
        mm = ModeMasses(law, target.modes)
        error = mm.tv

    out: dict[str, Any] = {"nfe": None}
    fkc = sd.smc(model, N, batch_shape=(repeats,), resample="adaptive", generator=gen)
    x, lw = fkc.particles.cpu().to(F64), fkc.log_w.cpu()
    out["fkc"] = float(error(x, torch.softmax(lw, -1)).mean())
    out["fkc_dlogz"] = float((fkc.log_z.cpu() - log_z).abs().mean())
    out["fkc_min_ess"] = float((fkc.ess.cpu().min(0).values / N).mean())
    out["nfe"] = fkc.nfe

    plain = sd.smc(model, N, batch_shape=(repeats,), resample="never", generator=gen)
    xu = plain.particles.cpu().to(F64)
    out["unc"] = float(error(xu, torch.full(xu.shape[:-1], 1.0 / N, dtype=F64)).mean())

    if target.base is not None and target.log_weight is not None:
        base = target.base(**kw)
        draws = sd.smc(base, N, batch_shape=(repeats,), resample="never", generator=gen)
        assert draws.nfe == out["nfe"]
        xb = draws.particles
        lwb = target.log_weight(xb).cpu().to(F64)  # the base path weights are exactly 0
        xb = xb.cpu().to(F64)
        out["bon"] = float(error(xb, torch.softmax(lwb, -1)).mean())
        log_z_is = torch.logsumexp(lwb, -1) - math.log(N)
        out["bon_dlogz"] = float((log_z_is - log_z).abs().mean())
    return out


def _f(v: float | None, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--quick", action="store_true", help="N in {256, 1024}, steps in {25, 100}")
    ap.add_argument("--repeats", type=int, default=None,
                    help="independent runs per cell (default 4; 2 with --quick)")
    ap.add_argument("--particles", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, nargs="+", default=None)
    ap.add_argument("--targets", nargs="+", default=None, help="subset of target names")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    Ns = args.particles or ([256, 1024] if args.quick else [256, 1024, 4096])
    Ks = args.steps or ([25, 100] if args.quick else [25, 50, 100, 200])
    R = args.repeats or (2 if args.quick else 4)
    targets = make_targets(args.device)
    if args.targets:
        unknown = set(args.targets) - {t.name for t in targets}
        if unknown:
            raise SystemExit(f"unknown targets {sorted(unknown)}")
        targets = [t for t in targets if t.name in args.targets]

    print(f"torch {torch.__version__} on {args.device} ({torch.get_num_threads()} threads); "
          f"VP, d = 2, uniform Euler-Maruyama grid to t = 1e-3, exact start; {R} repeats per "
          "cell (mean); errors: W2 of the weighted Gaussian moments, or mode-mass TV")
    mix = next((t for t in targets if t.metric == "mode TV"), None)
    if mix is not None:
        law, _ = exact_at(mix, PROC.t_min)
        q = ModeMasses(law, mix.modes)
        print(f"{mix.name}: exact mode masses {[round(float(v), 4) for v in q.exact]} "
              f"(quadrature |log int p~/Z| = {q.quadrature_error:.1e})")
    print()
    print("| target | N | steps | NFE | FKC err | uncorrected err | best-of-N err | FKC/unc "
          "| FKC abs dlogZ | best-of-N abs dlogZ | FKC min ESS/N | s |")
    print("|" + " --- |" * 12)
    t_all = time.perf_counter()
    worse = []
    for target in targets:
        for N in Ns:
            for K in Ks:
                t_cell = time.perf_counter()
                r = run_cell(target, N, K, R, args.seed, args.device)
                dt = time.perf_counter() - t_cell
                ratio = r["fkc"] / r["unc"]
                if ratio >= 1:
                    worse.append(f"{target.name}, N = {N}, {K} steps: FKC/unc = {ratio:.2f}")
                print(f"| {target.name} ({target.metric}) | {N} | {K} | {r['nfe']} "
                      f"| {_f(r['fkc'])} | {_f(r['unc'])} | {_f(r.get('bon'))} | {ratio:.2f} "
                      f"| {_f(r['fkc_dlogz'], '.3f')} | {_f(r.get('bon_dlogz'), '.3f')} "
                      f"| {r['fkc_min_ess']:.2f} | {dt:.1f} |", flush=True)
    print()
    print(f"total {time.perf_counter() - t_all:.1f} s")
    if worse:
        print("cells where FKC's error was not below the uncorrected SDE's:")
        for line in worse:
            print(f"- {line}")
    else:
        print("FKC's error was below the uncorrected SDE's in every cell.")


if __name__ == "__main__":
    main()
