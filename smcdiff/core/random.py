"""Drawing from torch / pyro distributions with an explicit ``torch.Generator``.

``torch.distributions`` draw from the global RNG. smcdiff's rule is that every draw takes
a ``generator`` so that results are reproducible and independent of global state. Common
families are sampled here directly from the generator (exact same law); any other
distribution is sampled under a forked global RNG seeded from the generator.
"""

from __future__ import annotations

import torch
from torch import distributions as D


def _draw_uniform(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None):
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def _draw_normal(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None):
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)


def sample(
    dist: D.Distribution,
    sample_shape: torch.Size | tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``dist.sample(sample_shape)`` using ``generator`` for all randomness.

    Exact for Normal, MultivariateNormal, LowRank-free Independent wrappers, Uniform,
    Bernoulli, Categorical, Exponential and Delta-like point masses; other families fall
    back to the global RNG forked and seeded from ``generator`` (still reproducible).
    """
    sample_shape = torch.Size(sample_shape)
    shape = dist._extended_shape(sample_shape)
    # pyro wraps torch families; unwrap Independent / pyro's wrappers by type checks.
    if isinstance(dist, D.Independent):
        return sample(dist.base_dist, sample_shape, generator)
    if isinstance(dist, D.Normal):
        eps = _draw_normal(shape, dist.loc, generator)
        return dist.loc + dist.scale * eps
    if isinstance(dist, D.MultivariateNormal):
        eps = _draw_normal(shape, dist.loc, generator)
        return dist.loc + (dist._unbroadcasted_scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    if isinstance(dist, D.Uniform):
        u = _draw_uniform(shape, dist.low, generator)
        return dist.low + (dist.high - dist.low) * u
    if isinstance(dist, D.Exponential):
        u = _draw_uniform(shape, dist.rate, generator)
        return -torch.log1p(-u) / dist.rate
    if isinstance(dist, D.Bernoulli):
        u = _draw_uniform(shape, dist.probs, generator)
        return (u < dist.probs).to(dist.probs.dtype)
    if isinstance(dist, D.Categorical):
        probs = dist.probs
        cdf = torch.cumsum(probs.to(torch.float64), -1)
        cdf = cdf / cdf[..., -1:]
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=probs.device)
        cdf = cdf.expand(*shape, probs.shape[-1])
        idx = torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1)
        return idx.clamp_max(probs.shape[-1] - 1)
    device = next((v.device for v in vars(dist).values() if isinstance(v, torch.Tensor)), None)
    gen_device = generator.device if generator is not None else None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device).item())
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return dist.sample(sample_shape)
