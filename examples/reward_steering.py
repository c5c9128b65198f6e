"""Reward steering of a 2-D Gaussian-mixture diffusion model: FK steering and TDS against
best-of-N at equal NFE.

The "pretrained" model is the exact model of a three-mode mixture (45 / 45 / 10 %) under
the VP process; the reward ``r`` is the higher of two narrow bumps (:class:`smcdiff.fk.Bumps`),
one beside the rare 10 % mode and a lower one off the bottom-left mode. Every method gets
the same budget: ``N`` samples of a ``K``-step DDPM sampler (DDIM with ``eta = 1``), i.e.
``N K`` network evaluations per run, and returns one sample per run:

- **best-of-N**: ``N`` independent DDPM samples, return the one with the highest reward;
- **FK steering** (Singhal et al. 2025, arXiv 2501.06848): :class:`smcdiff.fk.FKSteering`
  with the DIFF potential ``G_n = exp(lam (r(x0_hat_n) - r(x0_hat_{n-1})))`` on the
  Tweedie estimate, resampling after every reward step and the final-step correction, so
  the weighted particles target ``p(x0) exp(lam r(x0)) / Z``; return the best of the ``N``
  final particles;
- **TDS** (Wu et al. 2023, arXiv 2306.17775): :class:`smcdiff.fk.TwistedDiffusion`, the DDPM
  step with its score shifted by ``grad_x lam r(x0_hat(x))`` and the matching weight,
  resampling every step; return the best of the ``N`` final particles.

The Tweedie estimate that FK steering's reward reads is the same data prediction the next
DDPM step needs (it is reused), and TDS's twist gradient is a backward pass through the
same evaluation, so all three cost ``K`` network evaluations per particle (printed).

Run::

    python examples/reward_steering.py --num-particles 8 --steps 20 --runs 256 --out steer

Prints, for each method, the mean reward of the returned sample over ``--runs`` independent
runs (with its standard error), the mean weighted reward of the final particles, the NFE,
and for the SMC methods the mean ``log Z_hat`` (which estimates ``log E[exp(lam r(x0))]``
under the sampler's law) next to the same quantity under the data law by quadrature.
Writes ``steering.png``: the final particles and the returned samples over the contours of
the data density and of the tilted target ``p exp(lam r)``.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence

import torch

import smcdiff as sd
from smcdiff.fk import Bumps, FKSteering, TwistedDiffusion
from smcdiff.gaussian import GaussianMixture

F64 = torch.float64
LIMIT = 5.0


def make_problem() -> tuple[GaussianMixture, Bumps]:
    """Three modes (45 / 45 / 10 %) and two narrow reward bumps (heights 1 and 0.6)."""
    data = GaussianMixture(
        torch.tensor([0.45, 0.45, 0.1], dtype=F64),
        torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=F64),
        0.3 * torch.eye(2, dtype=F64).expand(3, 2, 2).clone(),
    )
    reward = Bumps(torch.tensor([[0.5, 3.0], [-2.5, -1.0]], dtype=F64),
                   torch.tensor([1.0, 0.6], dtype=F64), width=0.35)
    return data, reward


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-particles", type=int, default=8, help="samples / particles per run")
    ap.add_argument("--steps", type=int, default=20, help="DDPM steps (NFE per particle)")
    ap.add_argument("--runs", type=int, default=256, help="independent runs (batched)")
    ap.add_argument("--lam", type=float, default=10.0, help="tilt strength of p exp(lam r)")
    ap.add_argument("--out", default="reward_steering_out", help="directory for the figure")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    data, reward = make_problem()
    process = sd.diffusion.VP()
    model = data.model(process, "eps")
    N, K, R, lam = args.num_particles, args.steps, args.runs, args.lam
    gen = torch.Generator().manual_seed(args.seed)

    bon = sd.diffusion.sample(model, "ddpm", num_steps=K, shape=(R, N, 2), generator=gen)
    fk = FKSteering(model, reward, lam, event_shape=(2,), num_steps=K, potential="diff")
    out_fk = sd.smc(fk, N, batch_shape=(R,), resample=fk.resample_steps, generator=gen)
    tds = TwistedDiffusion(model, reward, lam, event_shape=(2,), num_steps=K)
    out_tds = sd.smc(tds, N, batch_shape=(R,), resample="always", generator=gen)

    # Quadrature reference under the data law: log E_p[exp(lam r)] and E[r] under the tilt.
    u = torch.linspace(-LIMIT - 2, LIMIT + 2, 561, dtype=F64)
    pts = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1)
    log_p = data.log_prob(pts)
    log_tilt = log_p + lam * reward(pts)
    cell = 2 * math.log(float(u[1] - u[0]))
    quad_log_z = float(torch.logsumexp(log_tilt.flatten(), 0) + cell)
    tilt_mean_r = float((torch.softmax(log_tilt.flatten(), 0) * reward(pts).flatten()).sum())

    finals = {"best-of-N": (bon.x, torch.zeros(R, N, dtype=F64), None, bon.nfe),
              "FK steering": (out_fk.particles.x, out_fk.log_w, out_fk.log_z, out_fk.nfe),
              "TDS": (out_tds.particles.x, out_tds.log_w, out_tds.log_z, out_tds.nfe)}
    results: dict = {"quadrature_log_z": quad_log_z, "tilted_mean_reward": tilt_mean_r}
    print(f"GMM reward steering: {R} runs, N = {N}, {K} DDPM steps, lam = {lam:g}")
    print(f"  data law (quadrature): log E[exp(lam r)] = {quad_log_z:.3f}, "
          f"E[r] under p exp(lam r) = {tilt_mean_r:.3f}")
    print(f"  {'method':<12} {'best r (mean +- se)':>22} {'weighted r':>11} {'log Z_hat':>10} "
          f"{'NFE':>5}")
    for name, (x, log_w, log_z, nfe) in finals.items():
        r = reward(x)  # [R, N]
        best = r.amax(-1)
        weighted = (torch.softmax(log_w, -1) * r).sum(-1)
        row = {"best_reward": float(best.mean()),
               "best_reward_se": float(best.std() / math.sqrt(R)),
               "weighted_reward": float(weighted.mean()), "nfe": int(nfe),
               "returned": x[torch.arange(R), r.argmax(-1)], "particles": x}
        row["log_z"] = None if log_z is None else float(log_z.mean())
        lz = "-" if log_z is None else f"{row['log_z']:.3f}"
        print(f"  {name:<12} {row['best_reward']:>13.4f} +- {row['best_reward_se']:.4f} "
              f"{row['weighted_reward']:>11.4f} {lz:>10} {nfe:>5}")
        results[name] = row

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.6))
    for ax, name in zip(axes, ("best-of-N", "FK steering", "TDS")):
        row = results[name]
        top_p, top_t = float(log_p.max()), float(log_tilt.max())
        ax.contour(pts[..., 0], pts[..., 1], log_p, levels=[top_p - v for v in (6, 4, 2, 1)],
                   colors="0.6", linewidths=0.7, linestyles="solid")
        ax.contour(pts[..., 0], pts[..., 1], log_tilt, levels=[top_t - v for v in (6, 4, 2)],
                   colors="k", linewidths=1.0, linestyles="solid")
        xs = row["particles"].reshape(-1, 2)
        ax.scatter(xs[:, 0], xs[:, 1], s=2, color="C0", alpha=0.25, lw=0, label="all final")
        ax.scatter(row["returned"][:, 0], row["returned"][:, 1], s=8, color="C3",
                   label="returned (best of N)")
        ax.set_title(f"{name}: mean returned r {row['best_reward']:.3f}")
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlim(-LIMIT, LIMIT)
        ax.set_ylim(-LIMIT, LIMIT)
    axes[0].legend(loc="lower right", fontsize=7)
    fig.suptitle("grey: data density p; black: tilted target p exp(lam r)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = os.path.join(args.out, "steering.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"  figure: {path}")
    results["figure"] = path
    return results


if __name__ == "__main__":
    main()
