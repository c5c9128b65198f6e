import math

import pytest
import torch

from smcdiff.core import weights as W


def test_normalize_and_log_mean_exp_match_direct_formulas():
    lw = torch.tensor([[0.0, 1.0, -2.0, -math.inf]], dtype=torch.float64)
    w = torch.exp(lw)
    torch.testing.assert_close(W.normalize(lw), w / w.sum(-1, keepdim=True))
    torch.testing.assert_close(W.log_normalize(lw).exp(), w / w.sum(-1, keepdim=True))
    torch.testing.assert_close(W.log_mean_exp(lw), torch.log(w.mean(-1)))


def test_ess_bounds_and_known_values():
    N = 8
    assert W.ess(torch.zeros(N)).item() == pytest.approx(N)
    one = torch.full((N,), -math.inf)
    one[3] = 0.0
    assert W.ess(one).item() == pytest.approx(1.0)
    lw = torch.randn(5, N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.softmax(lw, -1)
    torch.testing.assert_close(W.ess(lw), 1 / (p**2).sum(-1))
    # huge log-weights do not overflow
    assert torch.isfinite(W.ess(lw * 1e4)).all()


def test_conditional_ess_equals_ess_of_increment_from_uniform_weights():
    g = torch.Generator().manual_seed(1)
    incr = torch.randn(3, 50, generator=g, dtype=torch.float64)
    torch.testing.assert_close(W.conditional_ess(torch.zeros(3, 50, dtype=torch.float64), incr),
                               W.ess(incr))
    # with non-uniform current weights: N (sum W g)^2 / sum W g^2
    lw = torch.randn(3, 50, generator=g, dtype=torch.float64)
    Wn, gi = torch.softmax(lw, -1), incr.exp()
    expected = 50 * (Wn * gi).sum(-1) ** 2 / (Wn * gi**2).sum(-1)
    torch.testing.assert_close(W.conditional_ess(lw, incr), expected)


def test_degenerate_detection_and_error():
    lw = torch.tensor([[0.0, -math.inf], [-math.inf, -math.inf], [0.0, math.nan]])
    assert W.is_degenerate(lw).tolist() == [False, True, True]
    with pytest.raises(W.DegenerateWeightsError, match=r"\[\[1\], \[2\]\]"):
        W.check_weights(lw, "at step 7")
    W.check_weights(lw[:1])
