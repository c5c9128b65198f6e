"""The SMC engine against the exact Kalman filter, and its contracts."""

import math

import pytest
import torch

import smcdiff as sd
from smcdiff.core import SMC, Always, AtSteps, Every, Never, resampling
from smcdiff.core.weights import DegenerateWeightsError


def _lgssm(T=50, sigma_y=1.0, seed=0, dtype=torch.float64):
    model = sd.ssm.LinearGaussian.ar1(rho=0.9, sigma_x=1.0, sigma_y=sigma_y, dtype=dtype)
    data = model.simulate(T, generator=torch.Generator().manual_seed(seed))
    return model, data.y, sd.ssm.kalman_filter(model, data.y)


def _ratio_mean_and_se(log_z, exact):
    r = torch.exp(log_z - exact)
    return r.mean().item(), (r.std() / math.sqrt(r.numel())).item()


@pytest.mark.parametrize("resample", ["adaptive", "always", AtSteps(frozenset(range(2, 50, 2))),
                                      Every(3)])
def test_log_evidence_is_unbiased_against_kalman(resample):
    model, y, exact = _lgssm()
    res = sd.smc(model.bootstrap(y), 300, batch_shape=(400,), resample=resample,
                 generator=torch.Generator().manual_seed(1))
    m, se = _ratio_mean_and_se(res.log_z, exact.log_likelihood)
    assert abs(m - 1) < 4 * se, (m, se)
    assert se < 0.05  # the comparison is informative
    torch.testing.assert_close(res.log_z_increments.sum(0), res.log_z)


def test_filtering_means_match_kalman():
    model, y, exact = _lgssm(T=30)
    R, N = 100, 1000
    res = sd.smc(model.bootstrap(y), N, batch_shape=(R,), collectors=[sd.Moments(name="x")],
                 generator=torch.Generator().manual_seed(2))
    est = res.collected["x.mean"][..., 0]  # [T, R]
    err = est.mean(1) - exact.filtered_mean[:, 0]
    se = est.std(1) / math.sqrt(R)
    assert torch.all(err.abs() < 5 * se + 1e-3), (err / se)
    # Weighted variances: within 5 SE plus their O(1/ESS) downward bias.
    var = res.collected["x.var"][..., 0]
    exact_var = exact.filtered_cov[:, 0, 0]
    bias = exact_var / res.ess.mean(1)
    assert torch.all((var.mean(1) - exact_var).abs() < 5 * var.std(1) / math.sqrt(R) + bias)


def test_float32_matches_kalman():
    model, y, exact = _lgssm(T=50, dtype=torch.float32)
    res = sd.smc(model.bootstrap(y), 500, batch_shape=(200,),
                 generator=torch.Generator().manual_seed(3))
    assert res.log_z.dtype == torch.float32
    m, se = _ratio_mean_and_se(res.log_z.double(), exact.log_likelihood.double())
    assert abs(m - 1) < 4 * se


class _NoiseReplay:
    """AR(1) bootstrap model whose noise is read from a tensor [T, *batch, N], so a batched
    run and separate runs see the same randomness."""

    def __init__(self, noise, y):
        self.noise, self.y, self.T = noise, y, noise.shape[0]

    def M0(self, N, batch_shape, generator):
        return self.noise[0].unsqueeze(-1) * 2.29

    def M(self, t, x_prev, generator):
        return 0.9 * x_prev + self.noise[t].unsqueeze(-1)

    def log_G(self, t, x_prev, x):
        return -0.5 * (x[..., 0] - self.y[t]) ** 2


class _UniformReplay:
    """A resampler that uses the uniforms recorded for the current step (set by the
    trigger below), so runs that skip resampling at some steps stay aligned."""

    def __init__(self, scheme, uniforms):
        self.scheme, self.uniforms, self.t = scheme, uniforms, 0

    def __call__(self, log_w, num_samples=None, *, uniforms=None, generator=None):
        return self.scheme(log_w, num_samples, uniforms=self.uniforms[self.t])


class _StepRecorder(sd.core.ESSTrigger):
    def __init__(self, replay):
        super().__init__(0.5)
        object.__setattr__(self, "replay", replay)

    def __call__(self, t, log_w, ess=None):
        self.replay.t = t
        return super().__call__(t, log_w, ess)


@pytest.mark.parametrize("scheme", ["systematic", "multinomial", "ssp"])
def test_batch_of_runs_equals_separate_runs_given_the_same_randomness(scheme):
    T, B, N = 25, 3, 64
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    y = torch.randn(T, generator=g, dtype=torch.float64) * 2
    r = resampling.get_resampler(scheme)
    u = torch.rand((T + 1, B, *r.uniforms_shape(N)), generator=g, dtype=torch.float64)
    replay = _UniformReplay(r, u)
    batched = SMC(_NoiseReplay(noise, y), N, (B,), replay, _StepRecorder(replay)).run()
    assert batched.resampled.any(0).all() and not batched.resampled.all()
    for b in range(B):
        replay = _UniformReplay(r, u[:, b])
        alone = SMC(_NoiseReplay(noise[:, b], y), N, (), replay, _StepRecorder(replay)).run()
        torch.testing.assert_close(alone.log_z, batched.log_z[b], rtol=0, atol=1e-12)
        torch.testing.assert_close(alone.particles, batched.particles[b], rtol=0, atol=1e-12)
        assert torch.equal(alone.resampled, batched.resampled[:, b])


def test_resampling_policies_and_flags():
    model, y, _ = _lgssm(T=12)
    fk = model.bootstrap(y)
    g = torch.Generator().manual_seed(0)
    never = sd.smc(fk, 50, resample="never", generator=g, record_ancestors=True)
    assert not never.resampled.any()
    assert torch.equal(never.ancestors[-1], torch.arange(50))
    always = sd.smc(fk, 50, resample=Always(), generator=g)
    assert always.resampled[1:].all() and not always.resampled[0]
    steps = sd.smc(fk, 50, resample=[3, 7], generator=g)
    assert torch.nonzero(steps.resampled).flatten().tolist() == [3, 7]
    assert isinstance(sd.core.make_trigger("never"), Never)


def test_genealogy_and_paths():
    model, y, _ = _lgssm(T=20)
    res = sd.smc(model.bootstrap(y), 200, batch_shape=(2,), resample="always",
                 record_ancestors=True, record_particles=True,
                 generator=torch.Generator().manual_seed(5))
    assert res.ancestors.shape == (20, 2, 200) and res.history.shape == (20, 2, 200, 1)
    lineage = sd.core.trace_lineage(res.ancestors)
    assert torch.equal(lineage[-1], torch.arange(200).expand(2, 200))
    # each traced ancestor's child was moved from it: x_t = 0.9 x_{t-1} + noise is a path
    paths = sd.core.gather_paths(res.history, lineage)
    assert torch.equal(paths[-1], res.particles)
    distinct = sd.core.num_distinct_ancestors(lineage)
    assert torch.all(distinct[0] <= distinct[-1]) and distinct[0].max() < 200  # degeneracy


def test_nfe_accounting_collectors_and_progress(capsys):
    class Counted(_NoiseReplay):
        def nfe(self, t):
            return 2

    noise = torch.randn(6, 10, dtype=torch.float64)
    res = sd.smc(Counted(noise, torch.zeros(6)), 10, progress=True,
                 collectors=[sd.core.Summary(lambda s, i: i.ess, name="ess_again")])
    assert res.nfe == 12 and res.total_nfe == 120
    torch.testing.assert_close(res.collected["ess_again"], res.ess)


def test_init_step_are_pure():
    model, y, _ = _lgssm(T=5)
    engine = SMC(model.bootstrap(y), 32)
    s0, _ = engine.init(torch.Generator().manual_seed(0))
    s1, info = engine.step(s0, torch.Generator().manual_seed(1))
    s1b, _ = engine.step(s0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(s1.particles, s1b.particles)
    assert s1.t == 2 and s0.t == 1 and info.t == 1
    with pytest.raises(AttributeError):
        s1.t = 3  # immutable


def test_no_grad_run_equals_the_ordinary_run_and_returns_ordinary_tensors():
    # Under no_grad an autograd-free model runs its loop in inference mode: same numbers,
    # and the result is made of tensors that allow in-place use and later autograd.
    model, y, _ = _lgssm(T=20)
    fk = model.bootstrap(y)
    assert fk.autograd_free
    kwargs = dict(batch_shape=(3,), record_ancestors=True, record_particles=True)
    ref = sd.smc(fk, 64, generator=torch.Generator().manual_seed(4), **kwargs)
    with torch.no_grad():
        fast = sd.smc(fk, 64, generator=torch.Generator().manual_seed(4), **kwargs)
    for name in ("particles", "log_w", "log_z", "ess", "resampled", "ancestors", "history"):
        a, b = getattr(ref, name), getattr(fast, name)
        assert torch.equal(a, b), name
        assert not b.is_inference(), name
    fast.particles.add_(1.0)
    x = torch.ones((), dtype=torch.float64, requires_grad=True)
    (x * fast.log_z.sum()).backward()
    assert float(x.grad) == float(ref.log_z.sum())


class _Bad:
    T = 4

    def __init__(self, out="nan"):
        self.out = out

    def M0(self, N, batch_shape, generator):
        return torch.zeros(*batch_shape, N, 1)

    def M(self, t, x_prev, generator):
        return x_prev

    def log_G(self, t, x_prev, x):
        lg = torch.zeros(x.shape[:-1])
        if t == 2 and self.out == "nan":
            lg[..., 0] = math.nan
        if t == 2 and self.out == "-inf":
            lg[...] = -math.inf
        if self.out == "shape":
            return lg[..., :-1]
        if self.out == "int":
            return lg.long()
        if self.out == "device":
            return lg.to("meta")
        return lg


def test_bad_input_gets_clear_errors():
    with pytest.raises(DegenerateWeightsError, match="step 2"):
        sd.smc(_Bad("nan"), 8)
    with pytest.raises(DegenerateWeightsError, match="step 2"):
        sd.smc(_Bad("-inf"), 8, batch_shape=(3,), check="end")
    with pytest.raises(ValueError, match=r"expected \[\*batch, N\]"):
        sd.smc(_Bad("shape"), 8)
    with pytest.raises(TypeError, match="floating point"):
        sd.smc(_Bad("int"), 8)
    with pytest.raises(ValueError, match="meta"):
        sd.smc(_Bad("device"), 8)
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
        sd.smc(_Bad("ok"), 0)
    with pytest.raises(ValueError, match="unknown resampling scheme"):
        sd.smc(_Bad("ok"), 8, resampling="sorted")
    with pytest.raises(ValueError, match="unknown resample policy"):
        sd.smc(_Bad("ok"), 8, resample="sometimes")
    with pytest.raises(TypeError, match="missing M, log_G"):
        sd.smc(type("X", (), {"T": 3, "M0": lambda *a: None})(), 8)
    with pytest.raises(ValueError, match="ess_threshold must lie in"):
        sd.smc(_Bad("ok"), 8, ess_threshold=1.5)


def test_resample_where_checks_what_the_engine_trusts():
    """resample_where (public; the engine's own calls skip these checks) validates the
    caller's log-weights and scaled weights before the scheme sees them."""
    from smcdiff.core.engine import resample_where

    x = torch.zeros(2, 4, 1)
    with pytest.raises(TypeError, match="floating point"):
        resample_where(True, torch.zeros(2, 4, dtype=torch.long), x, resampling.systematic, None)
    with pytest.raises(ValueError, match="scaled_w must have the shape"):
        resample_where(True, torch.zeros(2, 4), x, resampling.systematic, None,
                       scaled_w=torch.ones(2, 3))
    flag = torch.tensor([True, False])
    lw = torch.tensor([[0.0, -1.0, -2.0, -3.0], [0.0, 0.5, 1.0, 1.5]])
    x = torch.arange(8.0).reshape(2, 4, 1)
    moved, carried, anc, flags = resample_where(flag, lw, x, resampling.systematic,
                                                torch.Generator().manual_seed(0))
    assert torch.equal(anc[1], torch.arange(4)) and torch.equal(moved[1], x[1])
    assert torch.equal(carried[0], torch.zeros(4)) and torch.equal(carried[1], lw[1])
    assert torch.equal(flags, flag) and anc.dtype == torch.int64
