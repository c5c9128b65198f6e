"""Fast paths of the O(N^2) backward kernel and the forward smoother equal the generic ones.

:func:`smcdiff.ssm.backward.row_logits` computes the backward logits of a linear Gaussian
transition as ``log w^j - |q_j|^2 / 2 + p_i . q_j`` (row constants dropped) instead of calling
``model.log_m`` on all pairs; :func:`smcdiff.ssm.smoothing.ffbsm_update` normalises once per
row and sums with matrix products. Each is checked against the direct formula through the
generic path (a subclass that overrides ``log_m`` with the same density), to 1e-12, for
``d = 1`` and ``d = 2``, scalar and vector functionals, batched, chunked, and under autograd.
"""

from __future__ import annotations

import pytest
import torch
from helpers import gen

from smcdiff.ssm import LinearGaussian, lgssm_data
from smcdiff.ssm.backward import backward_log_kernel, gaussian_transition, row_logits
from smcdiff.ssm.linear_gaussian import LinearGaussianBootstrap
from smcdiff.ssm.smoothing import Additive, ffbsm, ffbsm_update

DT = torch.float64
T = 20


class GenericLG(LinearGaussianBootstrap):
    """The same model without the affine Gaussian declaration: the smoothers take the
    generic path (all-pairs ``log_m``)."""

    gaussian_transition = None


def models(d: int, rho=None):
    """(fast, generic) bootstrap models of a d-dimensional linear Gaussian SSM."""
    if d == 1:
        ssm = LinearGaussian.ar1(0.9 if rho is None else rho, 1.0, 1.0, dtype=DT)
        y = lgssm_data(1.0, T=T).y.to(DT)
    else:
        g = gen(0)
        A = torch.tensor([[0.8, 0.1], [-0.2, 0.7]], dtype=DT)
        B = torch.randn(d, d, generator=g, dtype=DT)
        Q = B @ B.mT + 0.5 * torch.eye(d, dtype=DT)
        ssm = LinearGaussian(A, torch.eye(d, dtype=DT), Q, torch.eye(d, dtype=DT),
                             torch.zeros(d, dtype=DT), torch.eye(d, dtype=DT))
        y = torch.randn(T, d, generator=g, dtype=DT)
    return LinearGaussianBootstrap(ssm, y), GenericLG(ssm, y)


def system(d: int, batch=(3,), Np=40, M=25, seed=1):
    g = gen(seed)
    x_prev = 2.0 * torch.randn(*batch, Np, d, generator=g, dtype=DT)
    log_w = torch.randn(*batch, Np, generator=g, dtype=DT)
    x = 2.0 * torch.randn(*batch, M, d, generator=g, dtype=DT)
    return x_prev, log_w, x


def _step(t, x_prev, x):  # h~_t = (x_{t-1} . x_t, |x_t|^2): shape [2]
    a = (x_prev * x).sum(-1, keepdim=True)
    return torch.cat([a, (x * x).sum(-1, keepdim=True).expand_as(a)], -1)


VECTOR = Additive(_step, lambda x0: torch.zeros(*x0.shape[:-1], 2, dtype=x0.dtype))
SCALAR = Additive(lambda t, xp, x: (xp * x).sum(-1, keepdim=True),
                  lambda x0: torch.zeros(*x0.shape[:-1], 1, dtype=x0.dtype))


@pytest.mark.parametrize("d", [1, 2])
def test_fast_logits_give_the_generic_kernel(d):
    fast, generic = models(d)
    assert gaussian_transition(fast, 1) is not None
    assert gaussian_transition(generic, 1) is None  # no declaration: generic path
    x_prev, log_w, x = system(d)
    ref = backward_log_kernel(generic, 1, x_prev, log_w, x).exp()  # [3, M, Np], rows sum to 1
    for model in (fast, generic):
        lam = torch.softmax(row_logits(model, 1, x_prev, log_w)(x), -1)
        torch.testing.assert_close(lam, ref, rtol=1e-12, atol=1e-14)
    # into a buffer, as ffbsm_update does
    buf = torch.empty_like(ref)
    out = row_logits(fast, 1, x_prev, log_w)(x, out=buf)
    assert out.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(torch.softmax(out, -1), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("functional", [SCALAR, VECTOR], ids=["scalar", "vector"])
@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_ffbsm_update_equals_the_direct_formula(d, functional, chunk_size):
    # tau_t^i = sum_j Lambda_t(i, j) [tau_{t-1}^j + h~_t(xi_{t-1}^j, xi_t^i)]
    fast, generic = models(d)
    x_prev, log_w, x = system(d)
    tau_prev = torch.randn(3, x_prev.shape[1], functional.init(x_prev).shape[-1],
                           generator=gen(2), dtype=DT)
    lam = backward_log_kernel(generic, 1, x_prev, log_w, x).exp()  # [3, M, Np]
    h = functional.step(1, x_prev.unsqueeze(1), x.unsqueeze(2))  # [3, M, Np, S]
    ref = (lam.unsqueeze(-1) * (tau_prev.unsqueeze(1) + h)).sum(2)
    for model in (fast, generic):
        tau = ffbsm_update(model, functional, 1, x_prev, log_w, x, tau_prev, chunk_size)
        torch.testing.assert_close(tau, ref, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("d", [1, 2])
def test_ffbsm_fast_path_equals_generic_path(d):
    fast, generic = models(d)
    for fn in (SCALAR, VECTOR):
        a = ffbsm(fast, fn, 64, batch_shape=(2,), generator=gen(3))
        b = ffbsm(generic, fn, 64, batch_shape=(2,), generator=gen(3))
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)


def test_ffbsm_gradient_equals_generic_path():
    # Under autograd the buffers are not used; both paths give the same value and gradient.
    vals, grads = [], []
    for k in range(2):
        rho = torch.tensor(0.9, dtype=DT, requires_grad=True)
        model = models(1, rho)[k]
        est = ffbsm(model, SCALAR, 32, generator=gen(4))
        (g,) = torch.autograd.grad(est.sum(), rho)
        vals.append(est.detach())
        grads.append(g)
    with torch.no_grad():
        ref = ffbsm(models(1)[0], SCALAR, 32, generator=gen(4))
    torch.testing.assert_close(vals[0], vals[1], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(vals[0], ref, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-9)
    assert bool(torch.isfinite(grads[0]))
