"""Injectable noise for stochastic samplers: a sampler is deterministic given its noise.

A noise sampler is any callable ``noise(step, like) -> z`` returning standard normal draws
shaped like ``like: [*batch, N, *event]`` (dtype/device of ``like``) for solver step
``step`` (``step = -1`` is the prior draw of ``x_init``). Three are provided:

- :class:`GeneratorNoise`: ``torch.randn`` from one ``torch.Generator`` (fast; the draws of a
  particle depend on how many particles share the call);
- :class:`PerParticleNoise`: one counter-based stream per particle *slot* (a seed per slot),
  so a particle's noise does not depend on the batch size, the number of particles or the
  other particles (A1111 / diffusers Brownian-tree seeding issues, solvers note §4). Streams
  belong to slots, not to particles: after SMC resampling, copies of one ancestor in
  different slots draw different noise, as they must;
- :class:`FixedNoise`: a given tensor ``z[step]`` (common random numbers, conditional SMC,
  tests).

The counter-based generator hashes ``(seed, step, element index)`` with the SplitMix64
finaliser (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators")
in int64 tensor arithmetic (two's-complement wrap-around) and maps two 53-bit uniforms to
a normal with the Box-Muller transform; everything is vectorised, with no Python loop over
particles.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["FixedNoise", "GeneratorNoise", "NoiseSampler", "PerParticleNoise", "as_noise_sampler"]


@runtime_checkable
class NoiseSampler(Protocol):
    """``noise(step, like) -> z``: standard normal draws shaped like ``like``."""

    def __call__(self, step: int, like: Tensor) -> Tensor: ...


class GeneratorNoise:
    """``z = torch.randn(like.shape, generator=generator)``; ``step`` is ignored.

    With ``generator=None`` the global RNG is used; pass a seeded generator for
    reproducibility.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}"
            )
        self.generator = generator

    def __call__(self, step: int, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype,
                           device=like.device)


def _as_signed(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _as_signed(0x9E3779B97F4A7C15)
_M1 = _as_signed(0xBF58476D1CE4E5B9)
_M2 = _as_signed(0x94D049BB133111EB)
_STEP_KEY = _as_signed(0xD1B54A32D192ED03)
_LANE_KEY = _as_signed(0xABC98388FB8FAC03)


def _srl(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 (arithmetic shift, sign bits masked off)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix64(z: Tensor) -> Tensor:
    """SplitMix64 finaliser on int64 tensors (wrap-around multiplication)."""
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


def _uniform53(z: Tensor) -> Tensor:
    """Top 53 bits of a 64-bit hash as a float64 uniform in (0, 1)."""
    return (_srl(z, 11).to(torch.float64) + 0.5) * 2.0**-53


class PerParticleNoise:
    """One reproducible normal stream per particle slot, independent of batch size.

    Args:
        seeds: int64 ``[*batch, N]`` (any integers), one per particle slot. Draws for a
            state ``like: [*batch, N, *event]`` at step ``s`` are a deterministic function
            of ``(seeds[b, n], s, flat event index)`` only.

    Use :meth:`from_generator` to draw the seeds.
    """

    def __init__(self, seeds: Tensor) -> None:
        if not isinstance(seeds, Tensor) or seeds.is_floating_point() or seeds.is_complex():
            raise TypeError("seeds must be an integer tensor [*batch, N]")
        if seeds.ndim < 1:
            raise ValueError("seeds must have shape [*batch, N] (at least 1-D)")
        self.seeds = seeds.to(torch.int64)

    @classmethod
    def from_generator(
        cls, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None,
        device: torch.device | str | None = None,
    ) -> PerParticleNoise:
        """Seeds ``[*batch, N]`` drawn from ``generator``."""
        seeds = torch.randint(0, 2**62, tuple(shape), generator=generator, dtype=torch.int64)
        return cls(seeds.to(device) if device is not None else seeds)

    def __call__(self, step: int, like: Tensor) -> Tensor:
        k = self.seeds.ndim
        if tuple(like.shape[:k]) != tuple(self.seeds.shape):
            raise ValueError(
                f"noise: seeds of shape {tuple(self.seeds.shape)} must be a prefix of the state "
                f"shape {tuple(like.shape)} ([*batch, N, *event])"
            )
        event = like.shape[k:]
        n_ev = math.prod(event)
        seeds = self.seeds.to(like.device)
        idx = torch.arange(n_ev, dtype=torch.int64, device=like.device).reshape(event)
        key = _mix64(seeds + _GOLDEN)
        key = _mix64(key ^ _mix64(torch.tensor(int(step) + 2, dtype=torch.int64) * _STEP_KEY))
        key = key.reshape(*key.shape, *([1] * len(event)))
        base = _mix64(key ^ (idx * _GOLDEN + _LANE_KEY))
        u1 = _uniform53(_mix64(base ^ 1))
        u2 = _uniform53(_mix64(base ^ 2))
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        return z.to(dtype=like.dtype)


class FixedNoise:
    """Given noise: ``z[step]`` for step ``step`` (``z: [num_steps, *x.shape]``)."""

    def __init__(self, z: Tensor) -> None:
        if not isinstance(z, Tensor) or not z.is_floating_point() or z.ndim < 1:
            raise TypeError("z must be a floating tensor [num_steps, *x.shape]")
        self.z = z

    def __call__(self, step: int, like: Tensor) -> Tensor:
        if not 0 <= step < self.z.shape[0]:
            raise ValueError(
                f"FixedNoise holds {self.z.shape[0]} steps of noise, step {step} requested "
                "(pass x_init explicitly: step -1 is the prior draw)"
            )
        zi = self.z[step]
        if zi.shape != like.shape:
            raise ValueError(f"FixedNoise: z[{step}] has shape {tuple(zi.shape)}, state has "
                             f"{tuple(like.shape)}")
        return zi.to(dtype=like.dtype, device=like.device)


def as_noise_sampler(noise: Any, generator: torch.Generator | None) -> NoiseSampler:
    """``noise`` if given (a callable or a tensor for :class:`FixedNoise`), else
    :class:`GeneratorNoise` on ``generator``."""
    if noise is None:
        return GeneratorNoise(generator)
    if isinstance(noise, Tensor):
        return FixedNoise(noise)
    if callable(noise):
        return noise
    raise TypeError(f"noise must be a noise sampler noise(step, like), a tensor or None, got "
                    f"{type(noise).__name__}")
