"""Normal draws (torch's sampler and the vectorised Box-Muller transform), the generator-
explicit sampling of distributions, and the cached constant tensors of the hot loops."""

import math

import pytest
import torch
from helpers import gen
from scipy import stats
from torch import distributions as D

from smcdiff.core import constants
from smcdiff.core.random import _BOX_MULLER_MIN, box_muller, sample, standard_normal

f64 = torch.float64


def test_box_muller_is_standard_normal():
    n = 400_000
    z = box_muller((n,), gen(0))
    assert z.shape == (n,) and z.dtype == f64 and torch.isfinite(z).all()
    # the empirical law: Kolmogorov-Smirnov against N(0, 1) (fixed seed, p far from 0)
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    # moments within 5 standard errors: E z = 0 (sd 1), E z^2 = 1 (sd sqrt 2),
    # E z^3 = 0 (sd sqrt 15), E z^4 = 3 (sd sqrt 96)
    for k, (mean, sd) in {1: (0, 1), 2: (1, math.sqrt(2)), 3: (0, math.sqrt(15)),
                          4: (3, math.sqrt(96))}.items():
        assert abs(float((z**k).mean()) - mean) < 5 * sd / math.sqrt(n), k
    # the cosine half and the sine half are independent (the pair is N(0, I_2))
    half = n // 2
    for a, b in ((z[:half], z[half:]), (z[:half] ** 2, z[half:] ** 2)):
        r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        assert abs(r) < 5 / math.sqrt(half)


def test_box_muller_shapes_and_reproducibility():
    z = box_muller((3, 5, 7), gen(1))  # odd count: one draw of the last pair is dropped
    assert z.shape == (3, 5, 7) and z.is_contiguous()
    assert torch.equal(z, box_muller((3, 5, 7), gen(1)))
    assert not torch.equal(z, box_muller((3, 5, 7), gen(2)))
    assert box_muller((0,), gen(0)).shape == (0,)
    assert box_muller((4,), gen(0), dtype=torch.float32).dtype == torch.float32


def test_standard_normal_paths():
    like32, like64 = torch.zeros((), dtype=torch.float32), torch.zeros((), dtype=f64)
    # small or float32: exactly torch.randn's draws
    for like, shape in ((like64, (4, 3)), (like32, (64, 256, 1))):
        x = standard_normal(shape, like, gen(3))
        torch.testing.assert_close(x, torch.randn(shape, generator=gen(3), dtype=like.dtype),
                                   rtol=0, atol=0)
    # float64 from _BOX_MULLER_MIN draws on: the Box-Muller transform
    shape = (2, _BOX_MULLER_MIN // 2)
    x = standard_normal(shape, like64, gen(4))
    assert x.shape == shape and x.dtype == f64
    assert torch.equal(x, box_muller(shape, gen(4)))
    # and so does sampling a float64 Normal through the generator-explicit sampler
    loc = torch.zeros(3, _BOX_MULLER_MIN, dtype=f64)
    y = sample(D.Normal(loc, 2.0), (), gen(5))
    assert torch.equal(y, 2.0 * box_muller(loc.shape, gen(5)))


def test_constants_are_cached_and_usable_in_and_out_of_inference_mode():
    a = constants.scalar_tensor(0.5, f64, torch.device("cpu"))
    assert a is constants.scalar_tensor(0.5, f64, torch.device("cpu"))
    assert a.dim() == 0 and float(a) == 0.5 and not a.is_inference()
    x = torch.ones(3, dtype=f64, requires_grad=True)
    (x * a).sum().backward()  # saved for backward outside inference mode
    with torch.inference_mode():
        assert torch.equal(torch.ones(3, dtype=f64) - a, torch.full((3,), 0.5, dtype=f64))
        r = constants.arange(4, torch.device("cpu"))
    assert r.tolist() == [0, 1, 2, 3] and not r.is_inference()
    o = constants.ones((2, 3), torch.int32, torch.device("cpu"))
    assert o is constants.ones((2, 3), torch.int32, torch.device("cpu"))
    big = (1, constants._CACHE_MAX_NUMEL + 1)  # too large to keep: made afresh
    assert constants.ones(big, torch.int8, torch.device("cpu")) is not constants.ones(
        big, torch.int8, torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_box_muller_tail_is_finite(dtype):
    # u = 0 gives log(1 - u) = 0 and r = 0; u just below 1 the largest radius, still finite
    z = box_muller((2_000_000,), gen(7), dtype=dtype)
    assert torch.isfinite(z).all() and float(z.abs().max()) < 9.0
