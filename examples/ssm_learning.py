"""Learn the stochastic volatility parameters (mu, rho, sigma) by stochastic-approximation MLE.

The score is estimated by PaRIS (Olsson & Westerborn 2017) applied to the Fisher-identity
additive functional, and the parameters follow Adam steps on unconstrained coordinates
``(mu, atanh rho, log sigma)`` (:func:`smcdiff.ssm.learning.stochastic_approximation`). The
functional is :class:`smcdiff.ssm.stochastic_volatility.StochasticVolatilityScore`, the SV
score written out, which equals the generic autodiff
:class:`smcdiff.ssm.learning.FisherScore` (``--generic-score`` uses that one, several times
slower). The data are the note's fixed SV
series (:func:`smcdiff.ssm.sv_data`), generated at ``mu = -1.02, rho = 0.9702, sigma = 0.178``.
The parameter trace is plotted to ``--out``.

    python examples/ssm_learning.py --iters 200 --particles 256 --out sv_trace.png   # ~20 s
    python examples/ssm_learning.py --iters 3 --particles 32 --T 20 --out /tmp/t.png   # smoke
"""

from __future__ import annotations

import argparse
import math

import torch

from smcdiff.ssm import StochasticVolatility, sv_data
from smcdiff.ssm.learning import FisherScore, LearningResult, stochastic_approximation
from smcdiff.ssm.stochastic_volatility import StochasticVolatilityScore

TRUE = {"mu": -1.02, "rho": 0.9702, "sigma": 0.178}


def build(p: dict[str, torch.Tensor]) -> StochasticVolatility:
    """SV model from unconstrained coordinates: rho = tanh(z_rho), sigma = exp(log_sigma)."""
    return StochasticVolatility.from_unconstrained(p)


def natural(theta: torch.Tensor) -> torch.Tensor:
    """Rows ``(mu, z_rho, log_sigma)`` -> ``(mu, rho, sigma)``."""
    return torch.stack([theta[..., 0], torch.tanh(theta[..., 1]), torch.exp(theta[..., 2])], -1)


def make_estimator(y: torch.Tensor, num_particles: int, num_runs: int,
                   generator: torch.Generator, generic_score: bool = False):
    """``params -> score [P]``: PaRIS (K = 2 backward draws) on ``num_runs`` independent filters,
    averaged."""
    from smcdiff.ssm.smoothing import paris

    def estimator(params: dict[str, torch.Tensor]) -> torch.Tensor:
        if generic_score:
            functional = FisherScore(build, params, y)
        else:
            functional = StochasticVolatilityScore(params)
        est = paris(build(params).bootstrap(y), functional, num_particles, num_backward=2,
                    batch_shape=(num_runs,), generator=generator)
        return est.mean(0)

    return estimator


def plot_trace(res: LearningResult, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nat = natural(res.theta)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3), constrained_layout=True)
    for i, (name, truth) in enumerate(TRUE.items()):
        axes[i].plot(nat[:, i].numpy(), lw=1, label="iterate")
        axes[i].axhline(truth, color="k", ls="--", lw=1, label="generating value")
        axes[i].set_title(name)
        axes[i].set_xlabel("iteration")
    axes[0].legend(fontsize=8)
    fig.suptitle("SA-MLE (Adam) for stochastic volatility, PaRIS score")
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> LearningResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--particles", type=int, default=256)
    parser.add_argument("--runs", type=int, default=4, help="independent PaRIS runs per step")
    parser.add_argument("--T", type=int, default=100, help="length of the SV series")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="sv_learning_trace.png")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--generic-score", action="store_true",
                        help="autodiff FisherScore instead of the written-out SV score")
    args = parser.parse_args(argv)

    y = sv_data(T=args.T).y
    generator = torch.Generator().manual_seed(args.seed)
    params0 = {"mu": torch.tensor(-0.5, dtype=torch.float64),
               "z_rho": torch.tensor(math.atanh(0.8), dtype=torch.float64),
               "log_sigma": torch.tensor(math.log(0.3), dtype=torch.float64)}
    estimator = make_estimator(y, args.particles, args.runs, generator, args.generic_score)
    res = stochastic_approximation(
        estimator, params0, args.iters, step_size=args.lr, decay=0.5, optimizer="adam",
        progress=args.progress or None,
    )
    plot_trace(res, args.out)
    final = natural(torch.cat([v.reshape(1) for v in res.averaged.values()]))
    print("Polyak average (mu, rho, sigma):", [round(float(v), 4) for v in final],
          "generating:", list(TRUE.values()))
    return res


if __name__ == "__main__":
    main()
