"""Captioning: FG-free MLM inputs, training/decoding parity, the smoothed loss, beam search, fine-tune + reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from grainvl.data.downstream_gen import collate_caption_train, fg_free_attention, fg_free_sequence
from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.models.decoder import SearchConfig, beam_search, greedy_search
from grainvl.models.factory import create_model, get_tokenizer
from grainvl.tasks.base import DataOptions
from grainvl.tasks.captioning import label_smoothed_loss
from grainvl.tasks.registry import get_task

QUIET = ["train.progress=false", "train.tensorboard=false", "train.track_energy=false", "train.count_flops=false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(images=20, videos=4, resolution=64, split_fractions=(12, 2, 3, 3), text_scenes=0, dialogues=0)
    generate_world(cfg, out)
    return out


@pytest.fixture(scope="module")
def module_and_tokenizer(world: Path) -> tuple:
    torch.manual_seed(0)
    model = create_model("xvlm-tiny").eval()
    tokenizer = get_tokenizer(model.config)
    task = get_task("captioning", meteor=False)
    return task, task.build(model, world, tokenizer).eval(), tokenizer


def test_fg_free_sequence_and_attention() -> None:
    # [CLS]=1 prompt=7 caption 20 21 [SEP]=2; targets 21 (position 3) and [SEP] (position 4).
    ids, positions, masks, labels = fg_free_sequence([1, 7, 20, 21, 2], [3, 4], mask_id=9)
    assert ids == [1, 7, 20, 9, 21, 9, 2]
    assert positions == [0, 1, 2, 3, 3, 4, 4]  # a [MASK] shares its token's position
    assert masks == [3, 5] and labels == [21, 2]
    keep = fg_free_attention(len(ids), masks)
    expected = torch.ones(7, 7, dtype=torch.bool).tril()
    expected[:, [3, 5]] = False
    expected[3, 3] = expected[5, 5] = True
    assert torch.equal(keep, expected)
    assert not keep[4, 3] and keep[5, 4] and not keep[6, 5]  # tokens never see masks; masks see real tokens


def test_label_smoothed_loss_is_the_official_kl() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 11), torch.tensor([[4, 5, -100], [6, -100, -100]])
    eps, ignore = 0.1, 0
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.full((11,), eps / 9)  # official: smoothing / (V - 2), 0 on the ignore id
    target[ignore] = 0
    rows = []
    for b, m in [(0, 0), (0, 1), (1, 0)]:
        q = target.clone()
        q[labels[b, m]] = 1 - eps
        rows.append(F.kl_div(logp[b, m], q, reduction="sum"))
    assert float(label_smoothed_loss(logits, labels, eps, ignore)) == pytest.approx(
        float(torch.stack(rows).mean()), rel=1e-5
    )
    hard = F.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=-100)
    assert float(label_smoothed_loss(logits, labels, 0.0, ignore)) == pytest.approx(float(hard), rel=1e-5)
    # The task hands it only the real masked rows (gather_labelled): the same value as on the padded (B, M, V).
    real = labels != -100
    assert float(label_smoothed_loss(logits[real], labels[real], eps, ignore)) == pytest.approx(
        float(label_smoothed_loss(logits, labels, eps, ignore)), abs=1e-7
    )


def test_train_stream_resumes_exactly(world: Path, module_and_tokenizer: tuple) -> None:
    task, module, tokenizer = module_and_tokenizer
    stream = task.train_stream(module, tokenizer, world, DataOptions(batch_size=4), 0, 1)
    for _ in range(4):  # past the first epoch of 12 records
        next(stream)
    state = stream.state_dict()
    expected = next(stream)
    resumed = task.train_stream(module, tokenizer, world, DataOptions(batch_size=4), 0, 1)
    resumed.load_state_dict(state)
    batch = next(resumed)
    assert batch.keys() == expected.keys() and all(torch.equal(batch[k], expected[k]) for k in batch)
    ids = batch["text_ids"]
    assert bool((ids == tokenizer.mask_token_id).any()) and batch["masked_ids"].ne(-100).any()
    masks = batch["masked_pos"].gather(1, batch["masked_pos"].new_zeros(4, 1))  # first mask of each row
    assert torch.equal(ids.gather(1, masks), torch.full_like(masks, tokenizer.mask_token_id))


@torch.no_grad()
def test_training_inputs_match_decoding(world: Path, module_and_tokenizer: tuple) -> None:
    """The [MASK] predictions of an FG-free training batch equal the decoder's steps on the same prefix."""
    _, module, tokenizer = module_and_tokenizer
    torch.manual_seed(1)
    image = torch.randn(1, 3, 64, 64)
    caption = tokenizer.encode("a red circle left of a star", add_special_tokens=False)
    ids = [*module.prompt_ids, *caption, tokenizer.sep_token_id]
    targets = list(range(len(module.prompt_ids), len(ids)))  # every caption token and [SEP]
    new_ids, positions, masks, labels = fg_free_sequence(ids, targets, tokenizer.mask_token_id)
    sample = {"image": image[0], "ids": new_ids, "positions": positions, "mask_index": masks, "labels": labels}
    batch = collate_caption_train([sample], tokenizer.pad_token_id, max_masks=len(masks))
    vis, vis_atts = module.model.encode_image(image)
    hidden = module.model.bert(batch["text_ids"], batch["text_atts"], mode="multimodal", encoder_hidden_states=vis,
                               encoder_attention_mask=vis_atts, position_ids=batch["position_ids"])  # fmt: skip
    train_logp = torch.log_softmax(module.model.mlm_logits(hidden[0, masks]), dim=-1)  # (T, V)
    step, _ = module.stepper(image)
    decode_logp = [step(None)[0]]
    for token in caption:  # teacher forcing: feed the true token, read the next [MASK]
        decode_logp.append(step(torch.tensor([token]))[0])
    torch.testing.assert_close(torch.stack(decode_logp), train_logp, atol=1e-4, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("decode", [greedy_search, beam_search])
def test_min_length_at_max_length_decodes_every_step(decode) -> None:
    """bench_compress times captioning with EOS forbidden until max_length, so every model does the same decoding
    work; a model that would stop at once (EOS most likely from step 1) must still take max_length steps."""
    calls = []

    def step(tokens: torch.Tensor | None) -> torch.Tensor:
        rows = 2 if tokens is None else tokens.shape[0]
        calls.append(rows)
        logits = torch.zeros(rows, 8)
        logits[:, 0] = 5.0  # EOS (id 0) is the most likely token every time
        logits[:, 1:] = torch.arange(1, 8, dtype=torch.float).expand(rows, -1) / 10
        return F.log_softmax(logits, dim=-1)

    cfg = SearchConfig(num_beams=2, max_length=6, min_length=6, no_repeat_ngram=0)
    sequences = decode(step, lambda index: None, 2, 0, cfg)
    assert len(calls) == 6 and [len(s) for s in sequences] == [6, 6]
    if decode is greedy_search:  # the contrast: EOS allowed, greedy stops after one step
        calls.clear()
        assert decode(step, lambda index: None, 2, 0, SearchConfig(1, 6, 0, no_repeat_ngram=0)) == [[], []]
        assert len(calls) == 1


def test_beam_one_equals_greedy_on_the_model(module_and_tokenizer: tuple) -> None:
    _, module, tokenizer = module_and_tokenizer
    torch.manual_seed(2)
    image = torch.randn(2, 3, 64, 64)
    cfg = SearchConfig(num_beams=1, max_length=6, min_length=2, no_repeat_ngram=3)
    eos = tokenizer.sep_token_id
    greedy = greedy_search(*module.stepper(image), 2, eos, cfg)
    beam = beam_search(*module.stepper(image), 2, eos, cfg)
    assert greedy == beam and all(1 <= len(s) <= 6 for s in greedy)
    captions = module.generate(image, SearchConfig(num_beams=3, max_length=6, min_length=2))
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


@pytest.mark.slow
def test_finetune_evaluate_and_reload(world: Path, tmp_path: Path) -> None:
    from grainvl.config import load_config
    from grainvl.recipes.finetune import FinetuneConfig, evaluate_run, finetune, load_finetuned

    run = tmp_path / "run"
    overrides = ["train.steps=2", "data.batch_size=4", "options.meteor=false", "options.max_length=6", *QUIET]
    finetune(
        load_config(
            FinetuneConfig,
            None,
            overrides,
            {"task": "captioning", "model": "xvlm-tiny", "world": world, "train.run_dir": run},
        )
    )
    results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {(r["split"], r["metric"]) for r in results} >= {("id", "CIDEr"), ("ood", "CIDEr"), ("ood", "Bleu_4")}
    task, module, tokenizer = load_finetuned(run, world)
    first = task.evaluate(module, tokenizer, world, "ood", tmp_path / "a")
    again = evaluate_run(run, world, "ood", tmp_path / "b")
    assert first == again
    saved = next(r for r in results if r["split"] == "ood" and r["metric"] == "CIDEr")["value"]
    assert first["CIDEr"] == pytest.approx(saved)
    result = json.loads((tmp_path / "a" / "caption_result_test_ood.json").read_text())
    gt = json.loads((world / "annotations" / "captioning" / "coco_karpathy_test_ood_gt.json").read_text())
    assert sorted(r["image_id"] for r in result) == sorted(i["id"] for i in gt["images"])
    assert task.latency_call(module, tokenizer, world, 2)() is not None


def test_decoding_projects_the_image_tokens_once_per_caption() -> None:
    # SharedTokens with a cache (what the caption stepper hands the cross-attention): the first project() per
    # module computes linear(tokens), later ones (each generated token, reordered beams) reuse it, same values.
    from grainvl.models.layers import SharedTokens

    calls = []

    class Counting(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return super().forward(x)

    torch.manual_seed(0)
    linear, tokens = Counting(4, 3), torch.randn(2, 5, 4)
    with torch.no_grad():
        expected = linear(tokens)  # (2, 5, 3)
    calls.clear()
    shared = SharedTokens(tokens, torch.arange(2), cache={})
    first = shared.project(linear)
    beams = shared.select(torch.tensor([1, 1, 0]))  # a beam reordering: rows move, the cache stays
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(beams.project(linear), expected[[1, 1, 0]])
    assert calls == [2]  # one projection of the 2 distinct images for both calls
    assert SharedTokens(tokens, torch.arange(2)).cache is None  # training: no cache, gradients flow each call
