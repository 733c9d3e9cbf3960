"""DaVinci's prefix objectives: hand-checked PLM / PIM splits, the teacher-forcing shift, the joint-vocab loss."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from grainvl.data.masking import IGNORE_INDEX
from grainvl.losses.prefix_lm import pim_prefix_rows, pim_target, plm_split, prefix_lm_loss, shift_targets

CAPTION = "a large striped red star left of a blue circle"  # 10 words


class ScriptedRng(random.Random):
    """Returns scripted values and records the arguments of every draw."""

    def __init__(self, randrange_values: list[int], random_values: list[float] = ()) -> None:
        super().__init__(0)
        self.randrange_values, self.random_values = list(randrange_values), list(random_values)
        self.calls: list[tuple] = []

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:  # type: ignore[override]
        self.calls.append(("randrange", start, stop))
        return self.randrange_values.pop(0)

    def random(self) -> float:
        self.calls.append(("random",))
        return self.random_values.pop(0)


# ---------------------------------------------------------------------------------------------- PLM split
def test_plm_split_cuts_at_the_drawn_word_boundary() -> None:
    rng = ScriptedRng([3, 0, 9])
    assert plm_split(CAPTION, rng) == ("a large striped", "red star left of a blue circle")
    assert plm_split(CAPTION, rng) == ("", CAPTION)  # k = 0: an empty prefix, the whole caption to generate
    assert plm_split(CAPTION, rng) == ("a large striped red star left of a blue", "circle")  # k = 9: one word left
    # randint(0, len(w)) with the upper bound excluded: the suffix always keeps a word.
    assert rng.calls == [("randrange", 0, 10)] * 3


def test_plm_split_caps_the_prefix_at_max_words() -> None:
    text = " ".join(f"w{i}" for i in range(40))
    prefix, suffix = plm_split(text, ScriptedRng([35]))  # min(35, 30) = 30
    assert prefix.split() == [f"w{i}" for i in range(30)] and suffix.split() == [f"w{i}" for i in range(30, 40)]
    prefix, _ = plm_split(text, ScriptedRng([35]), max_prefix_words=96)  # the C4 stream's cap
    assert len(prefix.split()) == 35


def test_plm_split_with_a_seeded_rng() -> None:
    # random.Random(7).randrange(0, 8) draws 5, 2, 6, ... (checked once by hand).
    rng = random.Random(7)
    text = "one two three four five six seven eight"
    assert plm_split(text, rng) == ("one two three four five", "six seven eight")
    assert plm_split(text, rng) == ("one two", "three four five six seven eight")
    for seed in range(200):  # every split keeps every word, in order, and a non-empty suffix
        prefix, suffix = plm_split(CAPTION, random.Random(seed))
        assert suffix and (prefix + " " + suffix).split() == CAPTION.split()


def test_plm_split_rejects_empty_text() -> None:
    with pytest.raises(ValueError, match="empty text"):
        plm_split("   ", random.Random(0))


# ---------------------------------------------------------------------------------------------- shift
def test_shift_targets_moves_labels_left_and_ignores_padding() -> None:
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0]])
    atts = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    dec_ids, dec_atts, labels = shift_targets(ids, atts)
    assert dec_ids.tolist() == [[101, 7, 8, 102], [101, 9, 102, 0]]
    assert dec_atts.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    i = IGNORE_INDEX
    assert labels.tolist() == [[7, 8, 102, i], [9, 102, i, i]]


# ---------------------------------------------------------------------------------------------- PIM
def test_pim_prefix_rows_random_mode_draws_bernoulli_then_rows() -> None:
    rng = ScriptedRng([5], [0.2])
    assert pim_prefix_rows(rng, grid_rows=16, image_prefix_prob=0.5, max_prefix_rows=14) == 5
    assert rng.calls == [("random",), ("randrange", 0, 15)]  # randint(0, max_prefix_rows + 1), bound excluded
    rng = ScriptedRng([], [0.7])  # the coin does not fire: no prefix and no row draw
    assert pim_prefix_rows(rng, 16, 0.5, 14) == 0 and rng.calls == [("random",)]
    rng = ScriptedRng([2], [0.99])
    assert pim_prefix_rows(rng, 4, 1.0, 14) == 2
    assert rng.calls[-1] == ("randrange", 0, 4)  # capped at grid_rows - 1: one row is always left to generate
    # Seeded: random.Random(3) gives random() = 0.238 < 0.5, then randrange(0, 15) = 8.
    assert pim_prefix_rows(random.Random(3), 16, 0.5, 14) == 8


def test_pim_prefix_rows_released_mode_never_has_a_prefix() -> None:
    rng = ScriptedRng([], [])
    assert all(pim_prefix_rows(rng, 16, 1.0, 14, mode="released") == 0 for _ in range(20))
    assert rng.calls == []  # and draws nothing
    with pytest.raises(ValueError, match="prefix mode"):
        pim_prefix_rows(rng, 16, 1.0, 14, mode="static")


def test_pim_target_is_img_bos_then_the_suffix_codes_in_raster_order() -> None:
    codes = torch.tensor([[[0, 1], [2, 3], [4, 5]], [[6, 7], [8, 9], [10, 11]]])  # (B=2, G=3, W=2)
    assert pim_target(codes, 1, offset=100, img_bos_id=999).tolist() == [
        [999, 102, 103, 104, 105],
        [999, 108, 109, 110, 111],
    ]
    assert pim_target(codes, 0, 100, 999)[0].tolist() == [999, 100, 101, 102, 103, 104, 105]
    with pytest.raises(ValueError, match="at least one"):
        pim_target(codes, 3, 100, 999)


# ---------------------------------------------------------------------------------------------- loss
def test_prefix_lm_loss_over_the_joint_vocab_and_restricted() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 10)
    labels = torch.tensor([[6, 7, IGNORE_INDEX], [8, IGNORE_INDEX, IGNORE_INDEX]])
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    assert torch.allclose(prefix_lm_loss(logits, labels), expected)
    # Restricted to ids [6, 9): the softmax only over those three ids.
    real = logits[labels != IGNORE_INDEX]  # (3, 10)
    targets = labels[labels != IGNORE_INDEX]
    by_hand = -(real.gather(1, targets[:, None])[:, 0] - real[:, 6:9].logsumexp(dim=1)).mean()
    restricted = prefix_lm_loss(logits, labels, allowed=(6, 9))
    assert torch.allclose(restricted, by_hand) and restricted < expected


def test_prefix_lm_loss_without_labels_is_a_zero_with_a_gradient() -> None:
    logits = torch.randn(1, 2, 5, requires_grad=True)
    loss = prefix_lm_loss(logits, torch.full((1, 2), IGNORE_INDEX))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None
