"""VQA: the answer decoder, answer ranking against brute force, the classifier head, fine-tune + reload end to end.

Also the shared generation pieces of ``grainvl.models.decoder`` (incremental decoding, greedy and
beam search), which captioning uses too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from grainvl.data.downstream_gen import answer_weights, pre_question
from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.models.decoder import (
    SearchConfig,
    TextDecoder,
    _blocked_tokens,
    beam_search,
    causal_mask,
    greedy_search,
    incremental_forward,
)
from grainvl.models.factory import create_model, get_tokenizer
from grainvl.tasks.base import DataOptions
from grainvl.tasks.registry import get_task

QUIET = ["train.progress=false", "train.tensorboard=false", "train.track_energy=false", "train.count_flops=false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(images=24, videos=6, resolution=64, split_fractions=(12, 4, 4, 4), text_scenes=0, dialogues=0)
    generate_world(cfg, out)
    return out


@pytest.fixture(scope="module")
def tiny() -> tuple:
    torch.manual_seed(0)
    model = create_model("xvlm-tiny").eval()
    return model, get_tokenizer(model.config)


# ---------------------------------------------------------------------------------------------- decoder
def test_decoder_is_initialised_from_the_fusion_layers(tiny: tuple) -> None:
    model, _ = tiny
    decoder = TextDecoder.from_fusion_layers(model.bert, model.mlm)
    fusion = model.bert.config.fusion_start
    assert len(decoder.bert.encoder.layer) == model.bert.config.num_layers - fusion
    source = model.bert.encoder.layer[fusion].state_dict()
    for key, value in decoder.bert.encoder.layer[0].state_dict().items():
        assert torch.equal(value, source[key]), key  # widths match in xvlm-tiny: cross K/V copied too
    assert torch.equal(decoder.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)
    assert decoder.cls.predictions.decoder.weight is decoder.bert.embeddings.word_embeddings.weight  # tied
    assert decoder.bert.embeddings.word_embeddings.weight is not model.bert.embeddings.word_embeddings.weight
    with pytest.raises(ValueError, match="num_dec_layers"):
        TextDecoder.from_fusion_layers(model.bert, model.mlm, 7)


def test_decoder_from_a_pruned_tower_keeps_each_layer_shape() -> None:
    from grainvl.models.text import BertEncoderModel, MLMHead, TextConfig

    cfg = TextConfig(vocab_size=50, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64, fusion_start=2,
                     encoder_width=32, layer_heads=[4, 3, 2, 0], layer_cross_heads=[0, 0, 1, 4],
                     layer_intermediate=[64, 10, 0, 20])  # fmt: skip
    tower, head = BertEncoderModel(cfg), MLMHead(cfg)
    decoder = TextDecoder.from_fusion_layers(tower, head)
    assert decoder.config.layer_heads == [2, 0] and decoder.config.layer_intermediate == [0, 20]
    for target, source in ((0, 2), (1, 3)):
        expected = tower.encoder.layer[source].state_dict()
        for key, value in decoder.bert.encoder.layer[target].state_dict().items():
            assert torch.equal(value, expected[key]), key
    ids = torch.randint(1, 50, (2, 5))
    assert decoder(ids, torch.ones_like(ids), torch.randn(2, 3, 32), torch.ones(2, 3)).shape == (2, 5, 50)


def test_incremental_decoding_equals_a_full_causal_pass(tiny: tuple) -> None:
    model, _ = tiny
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (2, 7))
    vis = torch.randn(2, 5, model.config.text.encoder_width)
    vis_atts = torch.ones(2, 5, dtype=torch.long)
    full = model.bert(ids, causal_mask(torch.ones_like(ids)), mode="multimodal", encoder_hidden_states=vis,
                      encoder_attention_mask=vis_atts)  # (2, 7, H)  # fmt: skip
    # Prefix of 3, then one token at a time through the cached per-layer inputs.
    out, history = incremental_forward(model.bert, ids[:, :3], torch.arange(3)[None], None, vis, vis_atts)
    pieces = [out]
    for t in range(3, 7):
        out, new = incremental_forward(model.bert, ids[:, t : t + 1], torch.tensor([[t]]), history, vis, vis_atts)
        history = [torch.cat([h, x], dim=1) for h, x in zip(history, new)]
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- search
class TableModel:
    """A step function over a fixed table: log p(next | last token) (V, V); the start state is token 0."""

    def __init__(self, table: torch.Tensor, batch: int) -> None:
        self.table, self.last = table, torch.zeros(batch, dtype=torch.long)

    def step(self, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is not None:
            self.last = tokens
        return self.table[self.last].clone()

    def reorder(self, rows: torch.Tensor) -> None:
        self.last = self.last[rows]


def sequence_score(table: torch.Tensor, tokens: list[int], eos: int) -> float:
    last, total = 0, 0.0
    for token in [*tokens, eos]:
        total += float(table[last, token])
        last = token
    return total


def test_beam_one_equals_greedy() -> None:
    torch.manual_seed(0)
    table = torch.log_softmax(torch.randn(4, 12, 12) * 3, dim=-1)
    cfg = SearchConfig(num_beams=1, max_length=9, min_length=2, no_repeat_ngram=3)
    for t in table:  # four random "models"
        greedy = greedy_search(*_fns(TableModel(t, 3)), 3, 1, cfg)
        beam = beam_search(*_fns(TableModel(t, 3)), 3, 1, cfg)
        assert greedy == beam


def _fns(m: TableModel) -> tuple:
    return m.step, m.reorder


def test_beam_search_finds_the_higher_scoring_sequence() -> None:
    # From the start: token 2 (p .6) then only weak continuations; token 3 (p .4) then EOS for sure.
    v, eos = 5, 1
    p = torch.full((v, v), 1e-6)
    p[0, 2], p[0, 3] = 0.6, 0.4
    p[2, 4], p[2, eos] = 0.3, 0.3  # after 2: at best 0.3
    p[4, eos] = 1.0
    p[3, eos] = 1.0
    table = (p / p.sum(1, keepdim=True)).log()
    cfg = SearchConfig(num_beams=2, max_length=5, min_length=0, no_repeat_ngram=0)
    greedy = greedy_search(*_fns(TableModel(table, 1)), 1, eos, cfg)[0]
    beam = beam_search(*_fns(TableModel(table, 1)), 1, eos, cfg)[0]
    assert greedy == [2] and beam == [3]  # 0.6 * 0.3 = 0.18 < 0.4 * 1.0
    assert sequence_score(table, beam, eos) > sequence_score(table, greedy, eos)
    # The best of every sequence of up to 5 tokens, by brute force, is the beam's.
    best = max(
        ([a, b][:n] for a in range(v) for b in range(v) for n in (1, 2)), key=lambda s: sequence_score(table, s, eos)
    )
    assert beam == best


def test_length_penalty_and_min_length() -> None:
    v, eos = 6, 1
    p = torch.full((v, v), 1e-6)
    p[0, 2], p[0, 3] = 0.5, 0.5
    p[2, eos] = 0.5  # short: 0.25
    p[2, 5] = 0.5
    p[3, 4] = 1.0
    p[4, 5] = 0.9  # long: 0.5 * 1 * .9 * .9 = .405 but the long one ends later
    p[5, eos] = 0.9
    table = (p / p.sum(1, keepdim=True)).log()
    raw = beam_search(*_fns(TableModel(table, 1)), 1, eos, SearchConfig(2, 6, 0, 0.0, 0))[0]
    assert raw == [3, 4, 5]  # log .405 > log .25
    forced = beam_search(*_fns(TableModel(table, 1)), 1, eos, SearchConfig(2, 6, 3, 0.0, 0))[0]
    assert len(forced) >= 3  # EOS forbidden for the first three tokens
    # A strong length penalty divides the (negative) score by a larger number for longer outputs.
    long_score = sequence_score(table, [3, 4, 5], eos) / ((5 + 4) / 6) ** 2
    short_score = sequence_score(table, [2], eos) / ((5 + 2) / 6) ** 2
    expected = [3, 4, 5] if long_score > short_score else [2]
    assert beam_search(*_fns(TableModel(table, 1)), 1, eos, SearchConfig(2, 6, 0, 2.0, 0))[0] == expected


def test_trigram_blocking() -> None:
    assert _blocked_tokens([5, 6, 7, 5, 6], 3) == [7]
    assert _blocked_tokens([5, 6, 7], 3) == []
    assert _blocked_tokens([5, 5], 2) == [5]


# ---------------------------------------------------------------------------------------------- data
def test_pre_question_and_answer_weights() -> None:
    assert pre_question("What colour is the cat's tail?", 30) == "what colour is the cat's tail?"
    assert pre_question("Is it black/white (mostly)?", 30) == "is it black white mostly?"
    answers, weights = answer_weights({"answer": ["red"] * 7 + ["dark red"] * 3, "dataset": "vqa"})
    assert answers == ["red", "dark red"] and weights == pytest.approx([0.7, 0.3])
    assert answer_weights({"answer": ["tree"], "dataset": "vg"}) == (["tree"], [0.5])


# ---------------------------------------------------------------------------------------------- ranking
def _module_and_batch(world: Path, tiny: tuple, **options: object) -> tuple:
    model, tokenizer = tiny
    task = get_task("vqa", **options).with_data(DataOptions(eval_batch_size=4))
    module = task.build(model, world, tokenizer).eval()
    data = task._dataset(module, tokenizer, world, "test", False)
    return task, module, data.collate([data.sample(i, 0) for i in range(4)])


@torch.no_grad()
def _brute_force_logp(module, states: torch.Tensor, atts: torch.Tensor) -> torch.Tensor:
    """log p(answer | question) for every (question, answer): each answer unpadded, by the chain rule."""
    q = states.shape[0]
    out = torch.zeros(q, len(module.answers))
    for a in range(len(module.answers)):
        ids = module.answer_ids[a][module.answer_atts[a].bool()][None].expand(q, -1)  # (Q, La) without padding
        logp = torch.log_softmax(module.text_decoder(ids, torch.ones_like(ids), states, atts), dim=-1)  # (Q, La, V)
        out[:, a] = logp[:, :-1].gather(2, ids[:, 1:, None])[..., 0].sum(1)
    return out


def test_answer_ranking_picks_the_most_likely_answer(world: Path, tiny: tuple) -> None:
    _, module, batch = _module_and_batch(world, tiny)
    with torch.no_grad():
        states = module.question_states(batch["image"], batch["question_ids"], batch["question_atts"])
    reference = _brute_force_logp(module, states, batch["question_atts"])  # (4, A)
    num_answers = len(module.answers)
    ids, scores = module.rank_answers(states, batch["question_atts"], k=num_answers)
    assert ids.shape == (4, num_answers)
    assert ids[:, 0].tolist() == reference.argmax(1).tolist()
    torch.testing.assert_close(scores, reference.gather(1, ids), atol=1e-4, rtol=1e-4)
    # With k < A only the first-token top-k compete: the answer is the best among them.
    k = 3
    start = module.answer_ids[:1, :1].expand(4, 1)
    with torch.no_grad():
        first = torch.log_softmax(
            module.text_decoder(start, torch.ones_like(start), states, batch["question_atts"])[:, 0], -1
        )
    kept = first[:, module.answer_ids[:, 1]].topk(k, dim=1).indices  # (4, k)
    ids_k, _ = module.rank_answers(states, batch["question_atts"], k=k)
    assert ids_k[:, 0].tolist() == kept.gather(1, reference.gather(1, kept).argmax(1, keepdim=True))[:, 0].tolist()
    # The official score adds the first token's log-probability once more.
    module.rank_first_token_twice = True
    _, official = module.rank_answers(states, batch["question_atts"], k=num_answers)
    module.rank_first_token_twice = False
    first_answer = first[:, module.answer_ids[:, 1]]
    assert torch.allclose(official.max(1).values, (reference + first_answer).max(1).values, atol=1e-4)


def test_training_loss_is_the_weighted_answer_likelihood(world: Path, tiny: tuple) -> None:
    model, tokenizer = tiny
    task = get_task("vqa").with_data(DataOptions(batch_size=3, augment=False))
    module = task.build(model, world, tokenizer).eval()  # xvlm-tiny has no dropout; eval keeps it exact
    batch = next(task.train_stream(module, tokenizer, world, task.data, 0, 1))
    with torch.no_grad():
        loss = float(module(batch)[0]["vqa_loss"])
        states = module.question_states(batch["image"], batch["question_ids"], batch["question_atts"])
        expected, row = 0.0, 0
        for q, n in enumerate(batch["answer_counts"].tolist()):
            for _ in range(n):
                ids = batch["answer_ids"][row][batch["answer_atts"][row].bool()][None]  # (1, La) unpadded
                logits = module.text_decoder(
                    ids, torch.ones_like(ids), states[q : q + 1], batch["question_atts"][q : q + 1]
                )
                logp = torch.log_softmax(logits[0], dim=-1)
                answer_logp = sum(float(logp[t, ids[0, t + 1]]) for t in range(ids.shape[1] - 1))
                expected -= float(batch["answer_weights"][row]) * answer_logp
                row += 1
    assert row == len(batch["answer_ids"]) and loss == pytest.approx(expected / 3, rel=1e-4)


def test_classifier_head_targets_and_prediction(world: Path, tiny: tuple) -> None:
    model, tokenizer = tiny
    task = get_task("vqa", head="classifier").with_data(DataOptions(batch_size=4))
    module = task.build(model, world, tokenizer)
    batch = next(task.train_stream(module, tokenizer, world, task.data, 0, 1))
    assert batch["answer_targets"].shape == (4, len(module.answers))
    assert torch.all(batch["answer_targets"].sum(1) <= 1 + 1e-6)
    losses, _ = module(batch)
    assert losses["vqa_loss"].requires_grad and math.isfinite(float(losses["vqa_loss"].detach()))
    answers = module.predict(batch["image"], batch["question_ids"], batch["question_atts"])
    assert all(a in module.answer_index for a in answers)
    with pytest.raises(ValueError, match="head"):
        get_task("vqa", head="mlp").build(model, world, tokenizer)


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_finetune_evaluate_and_reload(world: Path, tmp_path: Path) -> None:
    from grainvl.config import load_config
    from grainvl.recipes.finetune import FinetuneConfig, evaluate_run, finetune, load_finetuned

    run = tmp_path / "run"
    overrides = ["train.steps=2", "data.batch_size=4", "data.eval_batch_size=8", *QUIET]
    report = finetune(
        load_config(
            FinetuneConfig, None, overrides, {"task": "vqa", "model": "xvlm-tiny", "world": world, "train.run_dir": run}
        )
    )
    assert report, "rank 0 returns a summary"
    results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {(r["split"], r["metric"]) for r in results} >= {
        ("id", "vqa_acc"),
        ("ood", "vqa_acc"),
        ("ood", "vlue_exact_match"),
    }
    # The run folder reloads exactly: same weights, same predictions, same metrics.
    task, module, tokenizer = load_finetuned(run, world)
    first = task.evaluate(module, tokenizer, world, "id", tmp_path / "a")
    again = evaluate_run(run, world, "id", tmp_path / "b")
    assert first == again and 0.0 <= first["vqa_acc"] <= 100.0
    assert (tmp_path / "a" / "vqa_result_test.json").read_text() == (
        tmp_path / "b" / "vqa_result_test.json"
    ).read_text()
    saved = next(r for r in results if r["split"] == "id" and r["metric"] == "vqa_acc")["value"]
    assert first["vqa_acc"] == pytest.approx(saved)
    predictions = json.loads((tmp_path / "a" / "vqa_result_test.json").read_text())
    assert sorted(p["question_id"] for p in predictions) == sorted(r["question_id"] for r in json.loads(
        (world / "annotations" / "vqa" / "vqa_test.json").read_text()))  # fmt: skip
    assert task.latency_call(module, tokenizer, world, 2)() is not None
