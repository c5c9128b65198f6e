"""Resampling schemes against exact truth: unbiased offspring counts, variance ordering,
count bounds, conditional draws, float32 edge cases, batching and errors."""

import itertools
import math

import pytest
import torch
from scipy import stats

from smcdiff.core import resampling as R

SCHEMES = list(R.RESAMPLERS)
CONDITIONAL = [n for n, r in R.RESAMPLERS.items() if r.conditional_fn is not None]


def _weights(N, seed=0, zero=True):
    g = torch.Generator().manual_seed(seed)
    lw = 1.5 * torch.randn(N, generator=g, dtype=torch.float64)
    if zero:
        lw[2] = -math.inf  # a killed particle must never be selected
    return lw


def _counts(anc, N):
    return torch.nn.functional.one_hot(anc, N).sum(-2).double()


# killing keeps particle slots, so only M == N applies to it (its M != N error is tested)
CASES = [(s, f) for s in SCHEMES for f in (1.0, 0.5, 2.3) if s != "killing" or f == 1.0]


@pytest.mark.parametrize(("scheme", "M_factor"), CASES)
def test_offspring_counts_are_unbiased(scheme, M_factor):
    N, reps = 10, 20000
    M = max(1, int(M_factor * N))
    lw = _weights(N).expand(reps, N)
    anc = R.get_resampler(scheme)(lw, M, generator=torch.Generator().manual_seed(5))
    assert anc.shape == (reps, M) and anc.dtype == torch.int64
    counts = _counts(anc, N)
    expected = M * torch.softmax(_weights(N), -1)
    se = counts.std(0) / math.sqrt(reps)
    err = (counts.mean(0) - expected).abs()
    # Within 4.5 standard errors; where the count is deterministic (se = 0) exactly.
    assert torch.all(err <= 4.5 * se + 1e-12), (scheme, err, se)
    assert counts[:, 2].sum() == 0  # zero weight never selected
    assert torch.all(counts.sum(-1) == M)


def test_low_variance_schemes_beat_multinomial_and_respect_count_bounds():
    N, reps = 10, 20000
    lw = _weights(N, seed=3, zero=False).expand(reps, N)
    MW = N * torch.softmax(lw[0], -1)
    var = {}
    for scheme in ["multinomial", "stratified", "systematic", "residual", "ssp"]:
        c = _counts(R.get_resampler(scheme)(lw, generator=torch.Generator().manual_seed(0)), N)
        var[scheme] = c.var(0).sum().item()
        if scheme in ("systematic", "ssp"):
            assert torch.all((c == MW.floor()) | (c == MW.ceil()))
        if scheme == "residual":
            assert torch.all(c >= MW.floor())
    for scheme in ["stratified", "systematic", "residual", "ssp"]:
        assert var[scheme] < 0.8 * var["multinomial"], var


@pytest.mark.parametrize("scheme", CONDITIONAL)
def test_conditional_resampling_keeps_reference_and_has_the_right_law(scheme):
    """Drawing the reference's ancestor from W and the rest conditionally must give the
    same law of offspring counts as the unconditional scheme (Chopin & Singh 2015)."""
    N, reps = 3, 60000
    lw = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)).expand(reps, N)
    g = torch.Generator().manual_seed(11)
    ref = torch.multinomial(torch.softmax(lw[0], -1), reps, replacement=True, generator=g)
    slot = torch.randint(0, N, (reps,), generator=g)
    r = R.get_resampler(scheme)
    anc = r.conditional(lw, ref, slot, generator=g)
    assert torch.equal(anc.gather(1, slot[:, None]).squeeze(1), ref)
    cond = _counts(anc, N).long()
    uncond = _counts(r(lw, generator=g), N).long()
    keys = [k for k in itertools.product(range(N + 1), repeat=N) if sum(k) == N]
    code = lambda c: (c * torch.tensor([16, 4, 1])).sum(-1)
    table = torch.stack([
        torch.stack([(code(cond) == code(torch.tensor(k))).sum() for k in keys]),
        torch.stack([(code(uncond) == code(torch.tensor(k))).sum() for k in keys]),
    ])
    table = table[:, table.sum(0) > 0].numpy()
    p = stats.chi2_contingency(table).pvalue
    assert p > 1e-3, (scheme, table)


def test_sorted_overwrite_is_detected_by_the_conditional_law_test():
    """The known-wrong conditional multinomial (sorted draw, overwrite slot 0) fails the
    same comparison: the test above has power."""
    N, reps = 3, 60000
    lw = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)).expand(reps, N)
    g = torch.Generator().manual_seed(11)
    ref = torch.multinomial(torch.softmax(lw[0], -1), reps, replacement=True, generator=g)
    bad = torch.sort(R.multinomial(lw, generator=g), -1).values
    bad[:, 0] = ref
    good = R.multinomial(lw, generator=g)
    freq_bad = _counts(bad, N).mean(0)
    freq_good = _counts(good, N).mean(0)
    assert (freq_bad[0] - freq_good[0]).abs() > 0.05


@pytest.mark.parametrize("scheme", SCHEMES)
def test_batch_equals_separate_runs_given_the_same_uniforms(scheme):
    B, N = 4, 17
    r = R.get_resampler(scheme)
    lw = torch.randn(B, N, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    u = torch.rand((B, *r.uniforms_shape(N)), generator=torch.Generator().manual_seed(3),
                   dtype=torch.float64)
    batched = r(lw, uniforms=u)
    for b in range(B):
        assert torch.equal(batched[b], r(lw[b], uniforms=u[b]))
    # and a 2-D batch
    assert torch.equal(r(lw.reshape(2, 2, N), uniforms=u.reshape(2, 2, *u.shape[1:])),
                       batched.reshape(2, 2, N))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_float32_edge_cases(scheme):
    r = R.get_resampler(scheme)
    N = 1_000_000
    g = torch.Generator().manual_seed(0)
    lw = torch.randn(N, generator=g, dtype=torch.float32) * 3
    lw[::7] = -math.inf
    anc = r(lw, generator=g)
    assert anc.min() >= 0 and anc.max() < N
    assert not torch.any(anc % 7 == 0)
    # A uniform exactly 0 (and one just below 1) never picks a zero-weight particle.
    lw = torch.tensor([-math.inf, 0.0, -math.inf, 1.0, -math.inf], dtype=torch.float32)
    for fill in (0.0, 1 - 2**-53):
        u = torch.full(r.uniforms_shape(5), fill, dtype=torch.float64)
        anc = r(lw, uniforms=u)
        assert set(anc.tolist()) <= {1, 3}


def test_float32_and_float64_weights_agree():
    g = torch.Generator().manual_seed(4)
    lw = torch.randn(3, 1000, generator=g, dtype=torch.float64)
    u = torch.rand(3, generator=g, dtype=torch.float64)
    a64 = R.systematic(lw, uniforms=u)
    a32 = R.systematic(lw.float(), uniforms=u)
    assert (a64 != a32).float().mean() < 0.01


def test_systematic_counts_closed_form():
    lw = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    anc = R.systematic(lw, uniforms=torch.tensor(0.5, dtype=torch.float64))
    # points 0.125, 0.375, 0.625, 0.875 against cdf 0.1, 0.3, 0.6, 1.0
    assert anc.tolist() == [1, 2, 3, 3]


def test_degenerate_weights_give_valid_indices():
    lw = torch.full((2, 5), -math.inf)
    for scheme in SCHEMES:
        anc = R.get_resampler(scheme)(lw, generator=torch.Generator().manual_seed(0))
        assert anc.min() >= 0 and anc.max() < 5


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown resampling scheme 'sys'"):
        R.resample(torch.zeros(4), scheme="sys")
    with pytest.raises(ValueError, match="N >= 1"):
        R.systematic(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        R.multinomial(torch.zeros(3), 0)
    with pytest.raises(TypeError, match="floating point"):
        R.multinomial(torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        R.multinomial([0.0, 1.0])
    with pytest.raises(ValueError, match="uniforms must have shape"):
        R.stratified(torch.zeros(2, 4), uniforms=torch.rand(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="M == N"):
        R.killing(torch.zeros(4), 6)
    with pytest.raises(ValueError, match="no conditional version of 'ssp'"):
        R.ssp.conditional(torch.zeros(4), torch.tensor(0))


def test_systematic_counts_stay_in_range_at_the_uniform_bounds():
    """The uniform is kept in [2^-28, 1 - 2^-28], so ceil(M C_i - u) lies in [0, M] without
    clipping even where M C_N / C_N rounds above M; the ancestors are valid int64 indices
    and every positive-weight particle keeps its expected share."""
    g = torch.Generator().manual_seed(11)
    for dtype in (torch.float32, torch.float64):
        for N in (1, 2, 7, 1000, 4097):
            lw = torch.randn(16, N, generator=g, dtype=dtype) * 4
            if N > 2:
                lw[:, -1] = -math.inf  # a zero-weight tail after the last positive weight
            for fill in (0.0, 2.0**-60, 0.5, 1 - 2**-53):
                u = torch.full((16,), fill, dtype=torch.float64)
                anc = R.systematic(lw, uniforms=u)
                assert anc.dtype == torch.int64 and anc.shape == (16, N)
                last = N - 2 if N > 2 else N - 1  # the zero-weight tail is never picked
                assert anc.min() >= 0 and anc.max() <= last
                counts = _counts(anc, N)
                expected = N * torch.softmax(lw.double(), -1)
                assert (counts - expected).abs().max() < 1 + 1e-6  # systematic: |o_i - N W_i| < 1
