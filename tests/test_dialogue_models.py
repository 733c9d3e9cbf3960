"""Persona predictors, the sentence memory, the seq2seq model, the responder and the NLI judge on tiny world dialogues.

Most tests use ``sentence_encoder="bert-tiny"``: a random (seeded, so reproducible) encoder that is fast;
the ones that need the pretrained MiniLM's meaning say so.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from grainvl.data.formats.dialogue_nli import write_dialogue_nli
from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
from grainvl.data.world.dialogue import build_dialogue_nli, build_dialogues
from grainvl.dialogue.data import nli_examples, persona_bank, persona_examples, response_examples
from grainvl.dialogue.memory import (
    PARTNER,
    PARTNER_PERSONA,
    PROMPT,
    YOU,
    YOUR_PERSONA,
    SentenceEncoder,
    Source,
    memory_batch,
    relevance_features,
    relevance_ranks,
    sentence_encoder,
    source_items,
    utterance_sentences,
)
from grainvl.dialogue.nli import NLI_LABELS, ConsistencyJudge, NLIConfig, sentence_batch
from grainvl.dialogue.predictor import (
    PersonaApproximator,
    PredictorConfig,
    evaluate_predictor,
    load_predictor,
    matching_pursuit,
    speaker_sums,
    split_sentences,
)
from grainvl.dialogue.responder import SETTINGS, Responder, ResponderConfig, setting_personas
from grainvl.dialogue.seq2seq import FitConfig, ModelConfig, Seq2Seq
from grainvl.dialogue.tokens import BOS, DialogueVocab

TINY = ModelConfig(
    architecture="bert-tiny", decoder_layers=1, max_items=24, max_target_tokens=32, sentence_encoder="bert-tiny"
)


@pytest.fixture(scope="module")
def episodes() -> list[dict]:
    return build_dialogues(6, random.Random(0))


@pytest.fixture(scope="module")
def vocab(episodes: list[dict]) -> DialogueVocab:
    texts = [*persona_bank(), *(u for e in episodes for t in e["turns"] for u in (t["text"], t["labels"][0]))]
    return DialogueVocab.build(load_tokenizer(packaged_minilm_path()), texts)


# ---------------------------------------------------------------------------------------------- memory
def test_items_keep_prompt_personas_and_the_newest_sentences_tagged_by_speaker() -> None:
    history = ("hi . how are you ?", "fine , thanks .", "i have a dog . he is max .")  # the partner speaks last
    items = source_items(Source(history, "your persona:", ("i like tea.",), ("i run.",)), max_items=6)
    assert items[:3] == [("your persona:", PROMPT, 0), ("i like tea.", YOUR_PERSONA, 0), ("i run.", PARTNER_PERSONA, 0)]
    # 6 items: the 3 newest sentences survive, the oldest ("hi .", "how are you ?", "fine , thanks .") are cut
    assert items[3:] == [("fine , thanks .", YOU, 1), ("i have a dog .", PARTNER, 0), ("he is max .", PARTNER, 0)]
    # seen from the partner, the partner's sentences are "you"
    from_partner = source_items(Source(history, speaker="partner"), max_items=10)
    assert [kind for _, kind, _ in from_partner] == [YOU, YOU, PARTNER, YOU, YOU]
    assert utterance_sentences("wow , really ? i ran . ok") == ["wow , really ?", "i ran .", "ok"]
    with pytest.raises(ValueError, match="speaker must be"):
        source_items(Source(history, speaker="them"), 10)


def test_relevance_ranks_persona_facts_by_their_cosine_with_the_latest_utterance() -> None:
    unit = torch.eye(4)
    # items: your persona a, b; partner persona c; the agent's old sentence; the latest (partner) sentence ~ b
    latest = F.normalize(unit[1] + 0.5 * unit[0], dim=0)
    vectors = torch.stack([unit[0], unit[1], unit[2], unit[1], latest])[None]  # (1, 5, 4)
    kinds = torch.tensor([[YOUR_PERSONA, YOUR_PERSONA, PARTNER_PERSONA, YOU, PARTNER]])
    positions, mask = torch.tensor([[0, 1, 0, 1, 0]]), torch.ones(1, 5, dtype=torch.long)
    features = relevance_features(vectors, kinds, positions, mask)
    torch.testing.assert_close(features["relevance"][0], torch.tensor([latest[0], latest[1], 0.0, 0.0, 0.0]))
    assert features["positions"][0].tolist() == [1, 0, 0, 1, 0]  # b is the more relevant of your facts
    assert features["selected"][0].tolist() == [0, 1, 2, 0, 0]
    assert relevance_ranks(
        torch.tensor([[0.5, 0.5, 0.9]]), torch.ones(1, 3, dtype=torch.long), mask[:, :3]
    ).tolist() == [[1, 2, 0]]  # ties keep their order
    no_latest = relevance_features(vectors, kinds, torch.ones_like(positions), mask)  # nothing said yet
    assert no_latest["relevance"].abs().sum() == 0 and no_latest["selected"].sum() == 0


class _Encoder:
    """A stand-in SentenceEncoder: one-hot vectors by text."""

    dim = 8

    def __init__(self, texts: list[str]) -> None:
        self.rows = {t: i for i, t in enumerate(texts)}

    def vectors(self, texts: list[str]) -> torch.Tensor:
        return torch.eye(self.dim)[[self.rows[t] for t in texts]]


def test_memory_batch_pads_and_marks_the_most_relevant_fact_of_each_persona() -> None:
    encoder = _Encoder(["cat.", "dog.", "jazz.", "my cat purrs ."])
    rows = [
        source_items(Source(("my cat purrs .",), "", ("dog.", "cat."), ("jazz.",)), 10),
        source_items(Source(("my cat purrs .",)), 10),
    ]
    batch = memory_batch(encoder, rows)  # type: ignore[arg-type]
    assert batch["vectors"].shape == (2, 4, 8) and batch["mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    # "cat." and "dog." are orthogonal to the one-hot utterance here: ties keep the order, "dog." first
    assert batch["selected"][0].tolist() == [YOUR_PERSONA, 0, PARTNER_PERSONA, 0]
    assert batch["selected"][1].tolist() == [0, 0, 0, 0]


def test_preset_sentence_encoder_is_reproducible_and_caches() -> None:
    a, b = SentenceEncoder("bert-tiny"), SentenceEncoder("bert-tiny")  # two loads: same seeded weights
    texts = ["i have a cat.", "i run marathons."]
    torch.testing.assert_close(a.vectors(texts), b.vectors(texts))
    torch.testing.assert_close(a.vectors(texts).norm(dim=-1), torch.ones(2))
    assert a.vectors([]).shape == (0, a.dim) and set(texts) <= set(a._cache)


# ---------------------------------------------------------------------------------------------- seq2seq
def test_incremental_decoding_equals_the_full_pass(vocab: DialogueVocab) -> None:
    torch.manual_seed(0)
    model = Seq2Seq(vocab, TINY).eval()
    memory = model.memory_inputs(model.items([Source(("hi , how are you ?",), "your persona:")]))
    states = model.encode(memory)
    step, _ = model._stepper(states, memory["mask"])
    targets = torch.tensor([[BOS, 7, 9, 11]])
    full = torch.log_softmax(model.decoder(targets, torch.ones_like(targets), states, memory["mask"]).float(), -1)
    incremental = [step(None)] + [step(targets[:, i]) for i in range(1, 4)]
    for i, logp in enumerate(incremental):
        torch.testing.assert_close(logp, full[:, i], atol=1e-5, rtol=1e-5)


def test_seq2seq_learns_and_round_trips(vocab: DialogueVocab, episodes: list[dict], tmp_path: Path) -> None:
    examples = response_examples(episodes)[:8]
    model = Seq2Seq(vocab, TINY)
    sources, targets = [Source(e.history) for e in examples], [e.response for e in examples]
    losses = model.fit(sources, targets, FitConfig(steps=30, batch_size=8, lr=3e-3))
    assert losses[-1] < 0.6 * losses[0]
    model.save(tmp_path, "responder")
    loaded, _ = Seq2Seq.load(tmp_path, "responder")
    torch.testing.assert_close(loaded.score(sources, targets)[0], model.score(sources, targets)[0])
    with pytest.raises(ValueError, match="expected 'generator'"):
        Seq2Seq.load(tmp_path, "generator")


def test_responder_ranks_all_candidates_and_clones_independently(vocab: DialogueVocab, episodes: list[dict]) -> None:
    examples = response_examples(episodes)[:3]
    responder = Responder.train(examples, vocab, ResponderConfig(model=TINY, fit=FitConfig(steps=2, batch_size=3)))
    personas = setting_personas("gold", examples, None)
    scores = responder.rank(examples, personas)
    assert [len(s) for s in scores] == [len(e.candidates) for e in examples]
    one = responder.rank(examples[1:2], personas[1:2])[0]  # batched ranking = ranking one example alone
    assert one == pytest.approx(scores[1], abs=1e-5)
    clone = responder.clone()
    assert clone.model.sentences is responder.model.sentences  # the frozen encoder is shared, not copied
    clone.fine_tune(examples, FitConfig(steps=2, batch_size=3))
    assert responder.rank(examples[:1], personas[:1])[0] == pytest.approx(scores[0], abs=1e-5)


# ---------------------------------------------------------------------------------------------- predictors
def test_matching_pursuit_reads_a_sum_of_bank_vectors() -> None:
    bank = F.normalize(torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0, 0, 1.0]]), dim=-1)  # rows 0 and 1 are close
    z = bank[1] + bank[2]
    chosen = matching_pursuit(z, bank, threshold=0.5, top_k=5)
    assert [k for k, _ in chosen] == [1, 2]  # row 0 scores 0.8 first but is explained away by row 1
    assert matching_pursuit(z, bank, threshold=0.5, top_k=1) == chosen[:1]
    assert matching_pursuit(torch.zeros(3), bank, threshold=0.5, top_k=5) == []  # nothing revealed


def test_speaker_sums_split_what_each_side_said() -> None:
    encoder = sentence_encoder("bert-tiny")
    center = torch.zeros(encoder.dim)
    history = ("hi .", "i have a cat .", "i run .")  # the partner said "hi ." and "i run ."
    sums = speaker_sums([history, history], ["self", "partner"], encoder, center)  # (2, 2, D)
    agent, partner = encoder.vectors(["i have a cat ."])[0], encoder.vectors(["hi .", "i run ."]).sum(0)
    torch.testing.assert_close(sums[0, 0], agent)  # self: own = the agent's sentences
    torch.testing.assert_close(sums[1, 0], partner)  # partner: own = the partner's sentences
    torch.testing.assert_close(sums[1, 1], agent)


def test_approximator_learns_revealed_facts_tunes_and_round_trips(episodes: list[dict], tmp_path: Path) -> None:
    train = build_dialogues(40, random.Random(0))
    examples, bank = persona_examples(train), persona_bank(train)
    cfg = PredictorConfig(kind="approximator", model=TINY, fit=FitConfig(steps=300, batch_size=32, lr=1e-2))
    predictor = PersonaApproximator.train(examples, bank, cfg)
    assert evaluate_predictor(predictor, examples, bank)["fact_f1"] > 0.8  # a linear map fits what it saw
    assert 0.1 <= predictor.tune_threshold(examples[:100]) <= 0.9
    history, role = examples[5].history, examples[5].role
    facts = predictor.predict([history], [role])[0]
    assert all(s in bank for s, _ in facts)
    predictor.save(tmp_path)
    again = load_predictor(tmp_path).predict([history], [role])[0]
    assert [s for s, _ in again] == [s for s, _ in facts] and [v for _, v in again] == pytest.approx(
        [v for _, v in facts]
    )
    assert load_predictor(tmp_path, {"threshold": 10.0}).predict([history], [role]) == [[]]


def test_split_sentences_and_settings(episodes: list[dict]) -> None:
    assert split_sentences("i have a cat. i am a nurse.  ") == ["i have a cat.", "i am a nurse."]
    examples = response_examples(episodes)[:2]
    predicted = ([["mine."], ["mine2."]], [["theirs."], []])
    assert setting_personas("none", examples, None) == [((), ()), ((), ())]
    assert setting_personas("both", examples, predicted)[0] == (["mine."], ["theirs."])
    assert setting_personas("self", examples, predicted)[1] == (["mine2."], ())
    assert setting_personas("gold", examples, None)[0] == (examples[0].your_persona, examples[0].partner_persona)
    assert set(SETTINGS) == {"none", "self", "partner", "both", "gold"}
    with pytest.raises(ValueError, match="needs a persona predictor"):
        setting_personas("partner", examples, None)


# ---------------------------------------------------------------------------------------------- NLI judge
def test_nli_pairs_come_from_dialogue_nli_files_or_the_world(tmp_path: Path) -> None:
    pairs = build_dialogue_nli(9, random.Random(0))
    write_dialogue_nli(tmp_path / "dialogue" / "dnli" / "dialogue_nli_train.jsonl", pairs)  # a world's layout
    assert nli_examples(tmp_path, "train", 5) == [(p["utterance"], p["persona"], p["label"]) for p in pairs[:5]]
    write_dialogue_nli(tmp_path / "flat" / "dialogue_nli_dev.jsonl", pairs)  # the release's flat layout
    assert len(nli_examples(tmp_path / "flat", "valid", 100)) == 9
    with pytest.raises(FileNotFoundError, match=r"dialogue_nli_test\.jsonl"):
        nli_examples(tmp_path, "test", 5)
    drawn = nli_examples(None, "train", 30)
    assert drawn == nli_examples(None, "train", 30) and drawn != nli_examples(None, "test", 30)
    assert {label for *_, label in drawn} == set(NLI_LABELS)


def test_judge_pools_sentences_and_round_trips(tmp_path: Path) -> None:
    encoder = sentence_encoder("bert-tiny")
    vectors, mask = sentence_batch(encoder, ["oh nice . i have a cat .", "hi"])
    assert vectors.shape == (2, 2, encoder.dim) and mask.tolist() == [[1, 1], [1, 0]]
    triples = nli_examples(None, "train", 60)
    judge = ConsistencyJudge.train(triples, NLIConfig(sentence_encoder="bert-tiny", steps=3, batch_size=8))
    labels = judge.labels(["oh nice . i have a cat .", "hi"], [["i have a cat.", "i run."], []])
    assert [len(row) for row in labels] == [2, 0] and set(labels[0]) <= set(NLI_LABELS)
    judge.save(tmp_path)
    assert ConsistencyJudge.load(tmp_path).accuracy(triples) == judge.accuracy(triples)


@pytest.mark.slow  # ~20 s on two shared cores: the pretrained MiniLM's meaning is what the judge reads
def test_judge_on_pretrained_vectors_labels_held_out_pairs() -> None:
    train, test = nli_examples(None, "train", 6000), nli_examples(None, "test", 300)
    seen = {(u, p) for u, p, _ in train}
    held_out = [t for t in test if (t[0], t[1]) not in seen]
    judge = ConsistencyJudge.train(train, NLIConfig(steps=800))
    assert len(held_out) > 100 and judge.accuracy(held_out) > 0.8
