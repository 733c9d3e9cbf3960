"""TACO loss: a hand-computed case, the samplers' invariants, and the stop-gradient."""

from __future__ import annotations

import math

import pytest
import torch

from grainvl.losses.taco import (
    global_semantics,
    info_nce,
    sample_negative_index,
    sample_positive_index,
    sequence_lengths,
    taco_loss,
)

# Two sequences of three tokens, H = 2. Global semantics g = h - e are simple directions.
HIDDEN = [[[2.0, 1.0], [1.0, 2.0], [0.0, 3.0]], [[1.0, 0.0], [3.0, 3.0], [0.0, -1.0]]]
EMBED = [[[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]]
# g: seq 0 -> (1, 0), (0, 1), (0, 2); seq 1 -> (1, -1), (2, 3), (-1, -1)
POSITIVES = [[1, 0, 1], [2, 2, 0]]
# K = 2 negatives per anchor, from the other sequence.
NEG_ROWS = [[[1, 1]] * 3, [[0, 0]] * 3]
NEG_COLS = [[[0, 1], [1, 2], [2, 0]], [[0, 1], [2, 2], [1, 0]]]


def _cos(u: list[float], v: list[float]) -> float:
    return (u[0] * v[0] + u[1] * v[1]) / (math.hypot(*u) * math.hypot(*v))


def _expected_loss(valid: list[tuple[int, int]], tau: float) -> float:
    g = [[[h - e for h, e in zip(ht, et)] for ht, et in zip(hs, es)] for hs, es in zip(HIDDEN, EMBED)]
    total = 0.0
    for b, t in valid:
        anchor = g[b][t]
        logits = [_cos(anchor, g[b][POSITIVES[b][t]]) / tau]
        for row, col in zip(NEG_ROWS[b][t], NEG_COLS[b][t]):
            logits.append(_cos(anchor, g[row][col]) / tau)
        total += -logits[0] + math.log(sum(math.exp(x) for x in logits))
    return total / len(valid)


def _tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    hidden = torch.tensor(HIDDEN, dtype=torch.float64, requires_grad=True)
    embed = torch.tensor(EMBED, dtype=torch.float64, requires_grad=True)
    return hidden, embed, torch.tensor(POSITIVES), (torch.tensor(NEG_ROWS), torch.tensor(NEG_COLS))


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_taco_loss_matches_hand_computation(tau: float) -> None:
    hidden, embed, pos, neg = _tensors()
    loss = taco_loss(hidden, embed, temperature=tau, positive_index=pos, negative_index=neg)
    everyone = [(b, t) for b in range(2) for t in range(3)]
    assert loss.item() == pytest.approx(_expected_loss(everyone, tau), rel=1e-6)


def test_padding_and_anchor_mask_exclude_tokens() -> None:
    hidden, embed, pos, neg = _tensors()
    anchors = torch.tensor([[True, False, True], [True, True, True]])
    loss = taco_loss(hidden, embed, temperature=0.07, anchor_mask=anchors, positive_index=pos, negative_index=neg)
    expected = _expected_loss([(0, 0), (0, 2), (1, 0), (1, 1), (1, 2)], 0.07)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Right padding: sequence 1 has two real tokens, so its token 2 is never an anchor.
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    pos_pad = torch.tensor([[1, 0, 1], [1, 0, 0]])
    neg_cols = torch.tensor([[[0, 1], [1, 0], [0, 0]], [[0, 1], [2, 2], [1, 0]]])
    loss = taco_loss(hidden, embed, mask, 0.07, positive_index=pos_pad, negative_index=(neg[0], neg_cols))
    g = global_semantics(hidden, embed).detach()
    manual = []
    for b, t in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        cand = [g[b, pos_pad[b, t]]] + [g[neg[0][b, t, k], neg_cols[b, t, k]] for k in range(2)]
        logits = torch.stack([torch.cosine_similarity(g[b, t], c, dim=0) for c in cand]) / 0.07
        manual.append(-torch.log_softmax(logits, 0)[0])
    assert loss.item() == pytest.approx(torch.stack(manual).mean().item(), rel=1e-6)


def test_gradient_flows_only_through_anchors() -> None:
    hidden, embed, pos, neg = _tensors()
    # Token (0, 1) is not an anchor, but it is the positive of (0, 0) and (0, 2) and a negative of sequence 1.
    anchors = torch.tensor([[True, False, True], [True, True, True]])
    taco_loss(hidden, embed, temperature=0.07, anchor_mask=anchors, positive_index=pos, negative_index=neg).backward()
    assert torch.all(hidden.grad[0, 1] == 0) and torch.all(embed.grad[0, 1] == 0)
    assert hidden.grad[0, 0].abs().sum() > 0
    # Reference: the same loss with the targets as constants has exactly this gradient ...
    const = global_semantics(hidden, embed).detach()
    h2, e2 = hidden.detach().clone().requires_grad_(), embed.detach().clone().requires_grad_()
    anchor = global_semantics(h2, e2)
    positive = const[torch.arange(2)[:, None], pos]
    negatives = const[neg[0], neg[1]]
    info_nce(anchor, positive, negatives, 0.07, anchors).backward()
    torch.testing.assert_close(hidden.grad, h2.grad)
    torch.testing.assert_close(embed.grad, -hidden.grad)  # g = h - e
    # ... and differs from the gradient without the stop-gradient (so the check above can fail).
    h3 = hidden.detach().clone().requires_grad_()
    g3 = global_semantics(h3, embed.detach())
    a = torch.nn.functional.normalize(g3, dim=-1)
    p = torch.nn.functional.normalize(g3[torch.arange(2)[:, None], pos], dim=-1)
    n = torch.nn.functional.normalize(g3[neg[0], neg[1]], dim=-1)
    logits = torch.cat([(a * p).sum(-1, keepdim=True), torch.einsum("blh,blkh->blk", a, n)], -1) / 0.07
    torch.nn.functional.cross_entropy(logits[anchors], torch.zeros(5, dtype=torch.long)).backward()
    assert not torch.allclose(h3.grad, hidden.grad)


def test_positive_sampler_stays_in_window_and_sequence() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([12, 5, 2, 1])
    seq_len = 12
    picks = torch.stack([sample_positive_index(lengths, seq_len, 5, gen) for _ in range(200)])  # (200, B, L)
    t = torch.arange(seq_len)
    for b, length in enumerate(lengths.tolist()):
        for pos in range(length if length >= 2 else 0):
            chosen = picks[:, b, pos]
            assert torch.all(chosen != pos) and torch.all((chosen >= 0) & (chosen < length))
            inside = [pos + o for o in (-2, -1, 1, 2) if 0 <= pos + o < length]
            if pos >= 2 and pos + 2 < length:  # whole window inside: only window offsets, each drawn
                assert set(chosen.tolist()) == set(inside)
    # Full-length sequence, anchor 0: offsets -2/-1 fall outside -> uniform over the other 11 positions.
    assert set(picks[:, 0, 0].tolist()) - {1, 2}
    # Padding and length-1 sequences point at themselves (masked by the caller).
    assert torch.all(picks[:, 1, 5:] == t[5:]) and torch.all(picks[:, 3, :] == t)


def test_negative_sampler_draws_real_tokens_of_other_sequences() -> None:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([6, 2, 4])
    rows, cols = sample_negative_index(lengths, 6, 50, gen)
    assert rows.shape == cols.shape == (3, 6, 50)
    assert torch.all(rows != torch.arange(3)[:, None, None])
    assert torch.all(cols < lengths[rows]) and torch.all(cols >= 0)
    assert set(rows[0].flatten().tolist()) == {1, 2}
    with pytest.raises(ValueError, match="batch of >= 2"):
        sample_negative_index(torch.tensor([4]), 4, 50, gen)


def test_sampled_loss_is_finite_and_near_chance_for_random_states() -> None:
    torch.manual_seed(0)
    hidden, embed = torch.randn(4, 16, 32), torch.randn(4, 16, 32)
    loss = taco_loss(hidden, embed, temperature=1.0, num_negatives=50)
    # Random directions: cos ~ 0, so with tau = 1 the loss is close to log(1 + K).
    assert abs(loss.item() - math.log(51)) < 0.1


def test_sequence_lengths_rejects_left_padding() -> None:
    with pytest.raises(ValueError, match="right-padded"):
        sequence_lengths(torch.tensor([[0, 1, 1]]), 1, 3, torch.device("cpu"))
