"""CCLM's parallel-text losses against hand-computed values and against their definitions (both layouts)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from grainvl.data.masking import CCLM_PARA_MASKING, TextMaskingGenerator
from grainvl.losses.cross_view import check_text_pair_width, conditional_mlm_loss, ttc_loss, ttm_loss
from grainvl.losses.itm import itm_pairs, sample_hard_negatives
from grainvl.models.factory import create_model, get_tokenizer
from grainvl.models.xvlm import XVLM

TINY = Path(__file__).parents[1] / "src/grainvl/models/architectures/xvlm-tiny.json"


@pytest.fixture(autouse=True)
def _no_grad():  # the checks compare values; no test here back-propagates
    with torch.no_grad():
        yield


def tiny_model(tmp_path: Path, layout: str, text_width: int = 64) -> XVLM:
    """xvlm-tiny in either CCLM layout: the single stack, or a text encoder + a 1-layer cross encoder."""
    arch = json.loads(TINY.read_text())
    arch["name"] = f"cclm-test-{layout}"
    arch["text"].update(layout=layout, hidden_size=text_width)
    if layout == "cross":
        arch["text"].update(fusion_start=arch["text"]["num_layers"], cross_layers=1)
    path = tmp_path / f"{layout}-{text_width}.json"
    path.write_text(json.dumps(arch))
    torch.manual_seed(0)
    return create_model(str(path)).eval()


def test_ttc_matches_hand_computed_value() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = a @ b.T / 0.5 = [[2, 1.2], [0, 1.6]]; a→b over rows, b→a over columns.
    a2b = (-math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(math.exp(1.6) / (1 + math.exp(1.6)))) / 2
    b2a = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))) / 2
    assert float(ttc_loss(a, b, torch.tensor(0.5))) == pytest.approx((a2b + b2a) / 2, abs=1e-6)
    # Symmetric: swapping the two sentences of every pair leaves it unchanged.
    assert float(ttc_loss(b, a, torch.tensor(0.5))) == pytest.approx((a2b + b2a) / 2, abs=1e-6)


def _pair_states(model: XVLM) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    ids_a = torch.randint(1000, 2000, (3, 7), generator=generator)
    ids_b = torch.randint(1000, 2000, (3, 5), generator=generator)
    atts_a, atts_b = torch.ones_like(ids_a), torch.ones_like(ids_b)
    atts_b[0, 4:] = 0  # one padded sentence b: its padding must be masked out of the cross-attention
    return ids_a, atts_a, ids_b, atts_b


@pytest.mark.parametrize("layout", ["single", "cross"])
def test_ttm_puts_sentence_b_in_the_image_slot(tmp_path: Path, layout: str) -> None:
    model = tiny_model(tmp_path, layout)
    ids_a, atts_a, ids_b, atts_b = _pair_states(model)
    states_a, states_b = model.encode_text(ids_a, atts_a), model.encode_text(ids_b, atts_b)
    feat_a, feat_b = model.text_feat(states_a), model.text_feat(states_b)
    torch.manual_seed(5)
    loss = ttm_loss(model, states_a, atts_a, states_b, atts_b, feat_a, feat_b)
    # By definition: negatives from softmax(sim) + 1e-5 with the diagonal zeroed, the fused [CLS] of
    # (a as query, b as keys) through the shared ITM head, labels [1]*B + [0]*2B.
    torch.manual_seed(5)
    sim = feat_b @ feat_a.t() / model.temp  # rows: the image-slot sentence b
    neg_b, neg_a = sample_hard_negatives(sim, sim.t())
    assert not (neg_b == torch.arange(3)).any() and not (neg_a == torch.arange(3)).any()
    a_index, b_index = itm_pairs(neg_b, neg_a)
    fused = model.fuse(states_a[a_index], atts_a[a_index], states_b[b_index], atts_b[b_index])
    expected = F.cross_entropy(model.itm_logits(fused), torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0]))
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("layout", ["single", "cross"])
def test_conditional_mlm_predicts_a_given_b(tmp_path: Path, layout: str) -> None:
    model = tiny_model(tmp_path, layout)
    ids_a, atts_a, ids_b, atts_b = _pair_states(model)
    masked = ids_a.clone()
    masked[:, 2] = 103  # [MASK]
    masked_pos = torch.tensor([[2, 0], [2, 0], [2, 0]])
    masked_ids = torch.stack([ids_a[:, 2], torch.full((3,), -100)], dim=1)  # (B, M) with −100 padding
    states_b = model.encode_text(ids_b, atts_b)
    loss = conditional_mlm_loss(model, masked, atts_a, states_b, atts_b, masked_pos, masked_ids)
    hidden = model.fuse(model.encode_text(masked, atts_a), atts_a, states_b, atts_b)  # (B, La, H)
    expected = F.cross_entropy(model.mlm_logits(hidden[:, 2]), ids_a[:, 2])
    assert float(loss) == pytest.approx(float(expected), abs=1e-5)
    # The prediction depends on sentence b (it is the condition), and not on b's padding.
    other_b = model.encode_text(ids_b.flip(0), atts_b)
    assert float(conditional_mlm_loss(model, masked, atts_a, other_b, atts_b, masked_pos, masked_ids)) != float(loss)
    padded = states_b.clone()
    padded[0, 4:] += 100.0
    same = conditional_mlm_loss(model, masked, atts_a, padded, atts_b, masked_pos, masked_ids)
    assert float(same) == pytest.approx(float(loss), abs=1e-5)


def test_text_pair_width_must_match_the_cross_attention_keys(tmp_path: Path) -> None:
    check_text_pair_width(tiny_model(tmp_path, "cross"))
    with pytest.raises(ValueError, match=r"text states \(width 32\).*vision width 64"):
        check_text_pair_width(tiny_model(tmp_path, "cross", text_width=32))


def test_cclm_parallel_text_masking() -> None:
    tokenizer = get_tokenizer("xvlm-tiny")
    ids = [tokenizer.cls_token_id, *range(2000, 2061), tokenizer.sep_token_id, tokenizer.pad_token_id]  # 63 + pad
    counts = []
    for seed in range(40):
        masker = TextMaskingGenerator.from_options(tokenizer, CCLM_PARA_MASKING, rng=random.Random(seed))
        _corrupted, positions, labels = masker(ids)
        assert 0 not in positions and 64 not in positions  # [CLS] and padding never
        assert labels == [ids[p] for p in positions]
        counts.append(len(positions))
    assert set(counts) == {20}  # min(max_masks 20, round(0.4 · 63) = 25)
    short = [tokenizer.cls_token_id, *range(2000, 2008), tokenizer.sep_token_id]  # 10 tokens → round(4.0) = 4
    assert len(TextMaskingGenerator.from_options(tokenizer, CCLM_PARA_MASKING, rng=random.Random(0))(short)[1]) == 4
