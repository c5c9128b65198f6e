"""Conditional SMC / particle Gibbs: exact invariance on a binary HMM, exact path laws.

The particle Gibbs kernel leaves the smoothing distribution invariant. Started at C
independent exact posterior draws, one kernel application gives C independent exact
posterior draws, so the path counts are Multinomial(C, posterior) exactly and a chi-square
test against the enumerated posterior is exact (fixed seeds; threshold ALPHA). Deliberately
broken variants (the bugs of notes/particle-smoothing.md §3) must fail the same test.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from binary_hmm import BinaryHMM, chi2_pvalue, decode, posterior_draws
from helpers import gen
from scipy import stats

from smcdiff.core.csmc import (
    CONDITIONAL_SCHEMES,
    CSMCResult,
    ParticleGibbs,
    backward_sample,
    conditional_smc,
    csmc_kernel,
    run_particle_gibbs,
    trace_path,
)
from smcdiff.core.resampling import Resampler, multinomial, stratified
from smcdiff.core.weights import DegenerateWeightsError

ALPHA = 1e-4  # per-test false-alarm rate of the exact chi-square tests
C = 20_000  # chains per invariance test
SCHEMES = ["multinomial", "systematic", "stratified", "residual"]
VARIANTS = {  # name -> (ancestor_sampling, backward_sampling)
    "plain": (False, False),
    "AS": (True, False),
    "BS": (False, True),
    "AS+BS": (True, True),
}


# ----------------------------------------------------------------------- the model


class NoDensity:
    """The bootstrap HMM without ``log_m``."""

    T = 3

    def __init__(self):
        self._m = BinaryHMM()

    def M0(self, N, batch_shape, generator):
        return self._m.M0(N, batch_shape, generator)

    def M(self, t, x_prev, generator):
        return self._m.M(t, x_prev, generator)

    def log_G(self, t, x_prev, x):
        return self._m.log_G(t, x_prev, x)


def one_kernel_pvalue(model, seed, batch_shape=(C,), **kw) -> float:
    ref = posterior_draws(batch_shape, seed, model.dtype)
    new = csmc_kernel(model, ref, 3, batch_shape=batch_shape, generator=gen(seed + 1), **kw)
    assert new.shape == ref.shape and new.dtype == model.dtype
    return chi2_pvalue(new)


# ------------------------------------------------------------------ exact invariance


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_kernel_leaves_posterior_invariant(scheme, variant):
    as_, bs = VARIANTS[variant]
    seed = 1000 + 10 * SCHEMES.index(scheme) + list(VARIANTS).index(variant)
    p = one_kernel_pvalue(BinaryHMM(), seed, ancestor_sampling=as_, backward_sampling=bs,
                          resampling=scheme)
    assert p > ALPHA


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("scheme", ["multinomial", "systematic"])
def test_guided_kernel_leaves_posterior_invariant(scheme, variant):
    # G_t depends on x_{t-1}: the reference's previous state must be its ancestor's.
    as_, bs = VARIANTS[variant]
    seed = 2000 + 10 * SCHEMES.index(scheme) + list(VARIANTS).index(variant)
    p = one_kernel_pvalue(BinaryHMM(guided=True), seed, ancestor_sampling=as_,
                          backward_sampling=bs, resampling=scheme)
    assert p > ALPHA


@pytest.mark.parametrize("ref_slot", [1, 2])
def test_invariant_with_other_reference_slot(ref_slot):
    p = one_kernel_pvalue(BinaryHMM(guided=True), 3000 + ref_slot, ancestor_sampling=True,
                          resampling="stratified", ref_slot=ref_slot)
    assert p > ALPHA


def test_invariant_with_two_batch_dims():
    p = one_kernel_pvalue(BinaryHMM(), 3100, batch_shape=(100, C // 100),
                          ancestor_sampling=True, resampling="residual")
    assert p > ALPHA


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float32_kernel_invariant(variant):
    as_, bs = VARIANTS[variant]
    p = one_kernel_pvalue(BinaryHMM(torch.float32, guided=True), 3200 + len(variant),
                          ancestor_sampling=as_, backward_sampling=bs, resampling="systematic")
    assert p > ALPHA


# ------------------------------------------------------------- the test has power


class StalePrevious(BinaryHMM):
    """Guided HMM whose reference slot 0 sees another particle's previous state in G_t
    (the reference's ancestor state left unset)."""

    def log_G(self, t, x_prev, x):
        if x_prev is not None:
            x_prev = torch.cat([x_prev[..., 1:2], x_prev[..., 1:]], -1)
        return super().log_G(t, x_prev, x)


def few_kernels_pvalue(model, seed, iters=5, **kw) -> float:
    ref = posterior_draws((C,), seed, model.dtype)
    out = run_particle_gibbs(model, ref, iters, 3, batch_shape=(C,), generator=gen(seed + 1),
                             progress=False, **kw)
    return chi2_pvalue(out.paths[-1])


def _sorted_then_overwrite(log_w, ref, slot, generator):
    """The bug of particles v0.4 ``mcmc.CSMC``: N sorted multinomial draws, one overwritten."""
    B, N = log_w.shape
    cdf = torch.softmax(log_w.double(), -1).cumsum(-1)
    u = torch.rand(B, N, generator=generator, dtype=torch.float64)
    full = torch.searchsorted(cdf, u, right=True).clamp_(max=N - 1).sort(-1).values
    pos = torch.arange(N)
    return torch.where(pos == slot.unsqueeze(-1), ref.unsqueeze(-1), full)


# Broken schemes, both declared order-invariant by their name, so CSMC runs them with the
# reference first in the input order (as particles v0.4 does).
BROKEN = {
    # N sorted multinomial draws, slot 0 overwritten: the free ancestors are not iid and low
    # indices (the reference's included) are under-selected.
    "sorted_overwrite": Resampler("multinomial", multinomial.fn, True, _sorted_then_overwrite),
    # Conditional stratified resampling with unshuffled inputs: stratified depends on the
    # input order, and the reference always sits first in the cdf.
    "unshuffled_stratified": Resampler(
        "multinomial", stratified.fn, True, stratified.conditional_fn),
}
VALID = {"sorted_overwrite": "multinomial", "unshuffled_stratified": "stratified"}


@pytest.mark.parametrize("case", list(BROKEN))
def test_detects_broken_resampling(case):
    # The same procedure (posterior start, five kernels, chi-square) passes with the valid
    # scheme and rejects the broken one by a wide margin.
    seed = 4000 + 10 * list(BROKEN).index(case)
    assert few_kernels_pvalue(BinaryHMM(), seed, resampling=VALID[case]) > ALPHA
    assert few_kernels_pvalue(BinaryHMM(), seed, resampling=BROKEN[case]) < 1e-8


def test_detects_unset_reference_ancestor_state():
    # One kernel; the valid guided kernel passes this test in
    # test_guided_kernel_leaves_posterior_invariant.
    assert one_kernel_pvalue(StalePrevious(guided=True), 4100) < 1e-10


# ------------------------------------------------------------ convergence, driver


def test_particle_gibbs_converges_from_a_fixed_start():
    # Every chain starts at the path (1, 0, 1), of posterior probability ~0.01.
    start = decode(torch.full((C,), 5))
    # The total variation distance to the posterior roughly halves per iteration (0.25 after
    # one, ~0.005 after seven); after 20 it is ~1e-6, far below the test's resolution.
    out = run_particle_gibbs(BinaryHMM(guided=True), start, 20, 3, batch_shape=(C,),
                             generator=gen(5000), backward_sampling=True, progress=False)
    assert out.paths.shape == (20, 3, C)
    assert out.log_z.shape == (20, C)
    assert chi2_pvalue(out.paths[0]) < 1e-10  # not yet mixed after one step
    assert chi2_pvalue(out.paths[-1]) > ALPHA


def test_particle_gibbs_object_matches_function():
    model, ref = BinaryHMM(), posterior_draws((50,), 5100)
    k = ParticleGibbs(model, 4, (50,), ancestor_sampling=True, resampling="systematic")
    a = k(ref, gen(7))
    b = csmc_kernel(model, ref, 4, batch_shape=(50,), generator=gen(7), ancestor_sampling=True,
                    resampling="systematic")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# --------------------------------------------------- path selection, exact laws


class TableModel:
    """A model only for its ``log_m``: states are ``t N + i`` and
    ``log m_t(x_prev, x) = L[t, x_prev - (t-1)N, x - tN]``."""

    def __init__(self, L, N):
        self.L, self.N, self.T = L, N, L.shape[0]

    def log_m(self, t, x_prev, x):
        i = (x_prev - (t - 1) * self.N).long()
        j = (x - t * self.N).long()
        return self.L[t][i, j]


def _fixed_system(T=3, N=3, batch=2, seed=0):
    g = gen(seed)
    hist = (torch.arange(T).reshape(T, 1, 1) * N + torch.arange(N)).double().expand(T, batch, N)
    log_w = torch.randn(T, batch, N, generator=g, dtype=torch.float64)
    anc = torch.randint(0, N, (T, batch, N), generator=g)
    anc[0] = torch.arange(N)
    res = CSMCResult(hist.contiguous(), log_w, anc, torch.zeros(batch), torch.ones(T, batch), 0, N)
    L = torch.randn(T, N, N, generator=g, dtype=torch.float64)
    return res, TableModel(L, N)


def _index_codes(paths, N):
    # paths [T, batch, K] with values t N + i -> sequence code sum_t i_t N^(T-1-t)
    T = paths.shape[0]
    idx = (paths - torch.arange(T).reshape(T, 1, 1) * N).round().long()
    return sum(idx[t] * N ** (T - 1 - t) for t in range(T))


def _law_chi2(codes, probs):
    counts = torch.bincount(codes, minlength=probs.numel()).double()
    keep = probs > 0
    assert counts[~keep].sum() == 0
    return float(stats.chisquare(counts[keep].numpy(), (counts.sum() * probs[keep]).numpy()).pvalue)


def test_backward_sample_exact_law():
    T, N, K = 3, 3, 30_000
    res, model = _fixed_system(T, N)
    paths = backward_sample(res, model, gen(11), num_paths=K)
    assert paths.shape == (T, 2, K)
    codes = _index_codes(paths, N)
    W = torch.softmax(res.log_w, -1)
    for b in range(2):
        probs = torch.zeros(N**T, dtype=torch.float64)
        for seq in itertools.product(range(N), repeat=T):
            p = W[T - 1, b, seq[-1]]
            for t in range(T - 2, -1, -1):
                row = W[t, b] * model.L[t + 1][:, seq[t + 1]].exp()
                p = p * row[seq[t]] / row.sum()
            probs[sum(s * N ** (T - 1 - t) for t, s in enumerate(seq))] = p
        assert _law_chi2(codes[b], probs) > ALPHA


def test_trace_path_exact_law():
    T, N, K = 3, 3, 30_000
    res, _ = _fixed_system(T, N, seed=1)
    paths = trace_path(res, gen(12), num_paths=K)
    assert paths.shape == (T, 2, K)
    codes = _index_codes(paths, N)
    W = torch.softmax(res.log_w[-1], -1)
    for b in range(2):
        probs = torch.zeros(N**T, dtype=torch.float64)
        for k in range(N):
            seq = [k]
            for t in range(T - 1, 0, -1):
                seq.insert(0, int(res.ancestors[t, b, seq[0]]))
            probs[sum(s * N ** (T - 1 - t) for t, s in enumerate(seq))] += W[b, k]
        assert _law_chi2(codes[b], probs) > ALPHA


def test_single_path_drops_paths_axis():
    res, model = _fixed_system()
    assert trace_path(res, gen(0)).shape == (3, 2)
    assert backward_sample(res, model, gen(0)).shape == (3, 2)


# ---------------------------------------------------------- the particle system


class GaussianAR:
    """X_0 ~ N(0, I_2), X_t = 0.9 X_{t-1} + N(0, I_2); G_t = N(y_t; X_t, I_2)."""

    T = 4

    def __init__(self, dtype=torch.float64):
        self.y = torch.linspace(-1, 1, 8, dtype=dtype).reshape(4, 2)
        self.dtype = dtype

    def M0(self, N, batch_shape, generator):
        return torch.randn(*batch_shape, N, 2, generator=generator, dtype=self.dtype)

    def M(self, t, x_prev, generator):
        return 0.9 * x_prev + torch.randn(x_prev.shape, generator=generator, dtype=self.dtype)

    def log_G(self, t, x_prev, x):
        return -0.5 * ((x - self.y[t]) ** 2).sum(-1) - math.log(2 * math.pi)

    def log_m(self, t, x_prev, x):
        return -0.5 * ((x - 0.9 * x_prev) ** 2).sum(-1) - math.log(2 * math.pi)


class DictAR(GaussianAR):
    """The same model with particles as a container ``{"x": [*batch, N, 2]}``."""

    def M0(self, N, batch_shape, generator):
        return {"x": super().M0(N, batch_shape, generator)}

    def M(self, t, x_prev, generator):
        return {"x": super().M(t, x_prev["x"], generator)}

    def log_G(self, t, x_prev, x):
        return super().log_G(t, None if x_prev is None else x_prev["x"], x["x"])

    def log_m(self, t, x_prev, x):
        return super().log_m(t, x_prev["x"], x["x"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("ancestor_sampling", [False, True])
def test_system_shapes_and_reference_kept(dtype, ancestor_sampling):
    model, batch, N, slot = GaussianAR(dtype), (2, 3), 5, 3
    ref = torch.randn(4, *batch, 2, generator=gen(1), dtype=dtype)
    res = conditional_smc(model, ref, N, batch_shape=batch, generator=gen(2),
                          ancestor_sampling=ancestor_sampling, ref_slot=slot,
                          resampling="stratified")
    assert res.history.shape == (4, *batch, N, 2) and res.history.dtype == dtype
    assert res.log_w.shape == res.ancestors.shape == (4, *batch, N)
    assert res.log_z.shape == batch and res.ess.shape == (4, *batch)
    assert res.log_w.dtype == dtype and res.log_z.dtype == dtype
    torch.testing.assert_close(res.history[:, :, :, slot], ref, rtol=0, atol=0)
    assert torch.equal(res.ancestors[0], torch.arange(N).expand(*batch, N))
    if not ancestor_sampling:
        assert bool((res.ancestors[1:, ..., slot] == slot).all())
    assert res.particles.shape == (*batch, N, 2)
    assert res.weights.shape == (*batch, N)
    # The reference's weight at step t is G_t at its ancestor's state.
    for t in range(1, 4):
        a = res.ancestors[t, ..., slot]
        prev = torch.gather(res.history[t - 1], -2, a[..., None, None].expand(*batch, 1, 2))
        expected = model.log_G(t, prev[..., 0, :], ref[t])
        torch.testing.assert_close(res.log_w[t, ..., slot], expected)
    # log_z is the sum of the log mean weights.
    torch.testing.assert_close(res.log_z, (torch.logsumexp(res.log_w, -1) - math.log(N)).sum(0))


def test_container_particles():
    model, batch = DictAR(), (3,)
    ref = {"x": torch.randn(4, *batch, 2, generator=gen(3), dtype=torch.float64)}
    new = csmc_kernel(model, ref, 4, batch_shape=batch, generator=gen(4),
                      ancestor_sampling=True, backward_sampling=True)
    assert set(new) == {"x"} and new["x"].shape == (4, 3, 2)
    out = run_particle_gibbs(model, ref, 3, 4, batch_shape=batch, generator=gen(5),
                             progress=False)
    assert out.paths["x"].shape == (3, 4, 3, 2)


def test_same_seed_same_result():
    model, ref = GaussianAR(), torch.zeros(4, 2, 2, dtype=torch.float64)
    kw = dict(batch_shape=(2,), ancestor_sampling=True, backward_sampling=True)
    a = csmc_kernel(model, ref, 6, generator=gen(9), **kw)
    b = csmc_kernel(model, ref, 6, generator=gen(9), **kw)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------ errors


def test_reference_shape_mismatch():
    model = BinaryHMM()
    with pytest.raises(ValueError, match="batch_shape"):
        conditional_smc(model, torch.zeros(3, 5, dtype=torch.float64), 3, generator=gen(0))
    with pytest.raises(ValueError, match=r"\[T, \*batch, \*event\]"):
        conditional_smc(model, torch.zeros(2, 5, dtype=torch.float64), 3, batch_shape=(5,),
                        generator=gen(0))
    with pytest.raises(TypeError, match="dtype"):
        conditional_smc(model, torch.zeros(3, 5), 3, batch_shape=(5,), generator=gen(0))


@pytest.mark.parametrize("N", [1, 0, 2.0])
def test_too_few_particles(N):
    with pytest.raises(ValueError, match="num_particles"):
        conditional_smc(BinaryHMM(), torch.zeros(3, dtype=torch.float64), N)


def test_bad_ref_slot():
    with pytest.raises(ValueError, match="ref_slot"):
        ParticleGibbs(BinaryHMM(), 3, ref_slot=3)


@pytest.mark.parametrize("kw", [dict(ancestor_sampling=True), dict(backward_sampling=True)])
def test_missing_log_m(kw):
    ref = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="log_m"):
        csmc_kernel(NoDensity(), ref, 3, generator=gen(0), **kw)
    res = conditional_smc(NoDensity(), ref, 3, generator=gen(0))
    with pytest.raises(TypeError, match="log_m"):
        backward_sample(res, NoDensity(), gen(0))


@pytest.mark.parametrize("scheme", ["ssp", "killing"])
def test_scheme_without_conditional_version(scheme):
    with pytest.raises(ValueError, match="multinomial.*residual.*stratified.*systematic"):
        conditional_smc(BinaryHMM(), torch.zeros(3, dtype=torch.float64), 3, resampling=scheme)
    assert set(CONDITIONAL_SCHEMES) == {"multinomial", "residual", "stratified", "systematic"}


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown resampling scheme"):
        ParticleGibbs(BinaryHMM(), 3, resampling="nope")


def test_degenerate_weights_name_the_step():
    class Dead(BinaryHMM):  # every potential is zero at step 1
        def log_G(self, t, x_prev, x):
            lg = super().log_G(t, x_prev, x)
            return torch.full_like(lg, -math.inf) if t == 1 else lg

    with pytest.raises(DegenerateWeightsError, match="step 1"):
        conditional_smc(Dead(), torch.ones(3, 4, dtype=torch.float64), 2, batch_shape=(4,),
                        generator=gen(0))


def test_bad_log_m_shape():
    class Pairwise(BinaryHMM):
        def log_m(self, t, x_prev, x):
            return super().log_m(t, x_prev.unsqueeze(-1), x.unsqueeze(-2))

    with pytest.raises(ValueError, match="matched pairs"):
        csmc_kernel(Pairwise(), torch.zeros(3, 2, dtype=torch.float64), 3, batch_shape=(2,),
                    generator=gen(0), ancestor_sampling=True)


def test_bad_num_iters():
    with pytest.raises(ValueError, match="num_iters"):
        run_particle_gibbs(BinaryHMM(), torch.zeros(3, dtype=torch.float64), 0, 3)


def test_progress_bar_when_asked(capsys):
    ref = torch.zeros(3, 2, dtype=torch.float64)
    run_particle_gibbs(BinaryHMM(), ref, 2, 3, batch_shape=(2,), generator=gen(0), progress=True)
    assert "particle Gibbs" in capsys.readouterr().err
