"""grainvl.models.layers.dropout: the CPU masks drawn from 16-bit lanes of 64-bit random words.

What must hold (the masks themselves are other draws than torch's, by design):
- every lane of a word drops with probability round(p * 65536) / 65536 (the top lane is not biased:
  ``random_()`` without a range would leave its sign bit 0 and never drop there);
- the survivors are scaled by the exact inverse of that keep probability, and the gradient is the
  upstream gradient times the same mask and scale;
- the masks come from torch's CPU generator, so a seed reproduces them;
- eval mode, p = 0 and the switch off give torch's own dropout (bit for bit under the same seed);
- attention with dropout uses these masks, and without dropout is SDPA.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grainvl.models.layers import (
    Dropout,
    attend,
    dropout,
    explicit_attention,
    fast_dropout_applies,
    set_fast_cpu_dropout,
)


@pytest.fixture
def fast_on():
    previous = set_fast_cpu_dropout(True)
    yield
    set_fast_cpu_dropout(previous)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02])
def test_every_lane_drops_at_the_quantised_rate_and_survivors_are_rescaled(fast_on, p: float) -> None:
    torch.manual_seed(0)
    n = 1 << 20
    out = dropout(torch.ones(n), p, True)
    threshold = round(p * 65536)
    q = threshold / 65536
    dropped = (out == 0).view(-1, 4).float()  # one row per 64-bit word, one column per 16-bit lane
    sigma = math.sqrt(q * (1 - q) / (n // 4))
    for lane in range(4):
        assert abs(dropped[:, lane].mean().item() - q) < 6 * sigma, lane
    survivors = out[out != 0]
    assert torch.all(survivors == 65536 / (65536 - threshold))
    assert abs(out.mean().item() - 1.0) < 6 * math.sqrt(q / (1 - q) / n)  # the expectation is unchanged


def test_gradient_is_the_same_mask_and_scale_and_odd_sizes_work(fast_on) -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 5, 7, requires_grad=True)  # 105 elements: not a multiple of the 4 lanes of a word
    out = dropout(x, 0.3, True)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    keep = out != 0
    scale = 65536 / (65536 - round(0.3 * 65536))
    torch.testing.assert_close(out, x.detach() * keep * scale, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, upstream * keep * scale, rtol=0, atol=0)
    assert 0 < (~keep).sum() < x.numel()


def test_a_seed_reproduces_the_masks(fast_on) -> None:
    x = torch.ones(64, 33)
    torch.manual_seed(7)
    a = dropout(x, 0.1, True)
    torch.manual_seed(7)
    b = dropout(x, 0.1, True)
    c = dropout(x, 0.1, True)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_eval_zero_p_switch_off_and_extremes(fast_on) -> None:
    x = torch.randn(8, 16)
    assert dropout(x, 0.1, False) is x or torch.equal(dropout(x, 0.1, False), x)
    assert torch.equal(dropout(x, 0.0, True), x)
    assert torch.equal(dropout(x, 1e-6, True), x)  # below 1/131072: rounds to "never drop"
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))
    assert fast_dropout_applies(x, 0.1, True) and not fast_dropout_applies(x, 0.1, False)
    set_fast_cpu_dropout(False)
    assert not fast_dropout_applies(x, 0.1, True)
    torch.manual_seed(3)
    ours = dropout(x, 0.1, True)
    torch.manual_seed(3)
    assert torch.equal(ours, F.dropout(x, 0.1, True))  # off: torch's own kernel and draws


def test_dropout_module_has_no_state_and_follows_train_mode(fast_on) -> None:
    module = Dropout(0.25)
    assert module.state_dict() == {} and module.p == 0.25
    x = torch.ones(4096)
    assert (module(x) == 0).any()
    module.eval()
    assert torch.equal(module(x), x)


def test_attention_uses_the_fast_masks_in_training_and_sdpa_otherwise(fast_on) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 5)
    mask[1, ..., -2:] = torch.finfo(torch.float32).min  # padding in the second sequence
    torch.testing.assert_close(attend(q, k, v, mask, 0.0), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(explicit_attention(q, k, v, mask, 0.0), attend(q, k, v, mask, 0.0))
    torch.manual_seed(4)
    dropped = attend(q, k, v, mask, 0.2)
    torch.manual_seed(4)
    probs = (q @ k.transpose(-2, -1) / 2.0 + mask).softmax(-1)
    torch.testing.assert_close(dropped, dropout(probs, 0.2, True) @ v)
    sink: list[torch.Tensor] = []
    attend(q, k, v, mask, 0.0, sink)
    torch.testing.assert_close(sink[0], probs)  # probabilities kept pre-dropout for distillation
