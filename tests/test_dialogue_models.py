"""Persona predictors, the seq2seq model and the responder on tiny world dialogues."""

from __future__ import annotations

import random

import pytest
import torch

from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
from grainvl.data.world.dialogue import build_dialogues
from grainvl.dialogue.data import persona_bank, persona_examples, response_examples
from grainvl.dialogue.predictor import PersonaApproximator, PredictorConfig, load_predictor, split_sentences
from grainvl.dialogue.responder import SETTINGS, setting_personas
from grainvl.dialogue.seq2seq import FitConfig, ModelConfig, Seq2Seq
from grainvl.dialogue.tokens import BOS, EOS, DialogueVocab

TINY = ModelConfig(architecture="bert-tiny", decoder_layers=1, max_source_tokens=64, max_target_tokens=32)


@pytest.fixture(scope="module")
def episodes() -> list[dict]:
    return build_dialogues(6, random.Random(0))


@pytest.fixture(scope="module")
def vocab(episodes: list[dict]) -> DialogueVocab:
    texts = [*persona_bank(), *(u for e in episodes for t in e["turns"] for u in (t["text"], t["labels"][0]))]
    return DialogueVocab.build(load_tokenizer(packaged_minilm_path()), texts)


def test_source_keeps_the_prefix_and_the_newest_history(vocab: DialogueVocab) -> None:
    history = [f"utterance number {i} about my dog" for i in range(30)]
    ids = vocab.source("your persona:", history, 40)
    assert len(ids) == 40 and ids[0] == BOS and ids[-1] == EOS
    assert ids[1 : 1 + len(vocab.ids("your persona:"))] == vocab.ids("your persona:")
    newest = vocab.ids("partner: utterance number 29 about my dog")
    assert ids[-1 - len(newest) : -1] == newest  # truncated from the LEFT: the last utterance survives
    assert vocab.decode(vocab.ids("i have a dog named max.")) == "i have a dog named max."


def test_persona_targets_follow_the_annotations(episodes: list[dict]) -> None:
    episode = episodes[0]
    examples = persona_examples([episode])
    notes = episode["annotations"]
    for t in range(len(episode["turns"])):
        mine, theirs = examples[2 * t], examples[2 * t + 1]
        assert mine.role == "self" and theirs.role == "partner" and len(mine.history) == 2 * t + 1
        assert set(mine.target) == {episode["your_persona"][i] for turn in notes["revealed"][:t] for i in turn}
        assert set(theirs.target) == {
            episode["partner_persona"][i] for turn in notes["partner_revealed"][: t + 1] for i in turn
        }
    assert examples[0].target == ()  # nothing of the agent is revealed before its first response


def test_incremental_decoding_equals_the_full_pass(vocab: DialogueVocab) -> None:
    torch.manual_seed(0)
    model = Seq2Seq(vocab, TINY).eval()
    source_ids, source_mask = model.sources(["your persona:"], [["hi , how are you ?"]])
    states = model.encode(source_ids, source_mask)
    step, _ = model._stepper(states, source_mask)
    targets = torch.tensor([[BOS, 7, 9, 11]])
    full = torch.log_softmax(model.decoder(targets, torch.ones_like(targets), states, source_mask).float(), -1)
    incremental = [step(None)] + [step(targets[:, i]) for i in range(1, 4)]
    for i, logp in enumerate(incremental):
        torch.testing.assert_close(logp, full[:, i], atol=1e-5, rtol=1e-5)


def test_seq2seq_learns_and_round_trips(vocab: DialogueVocab, episodes: list[dict], tmp_path) -> None:
    examples = response_examples(episodes)[:8]
    model = Seq2Seq(vocab, TINY)
    prefixes, histories, targets = ["p"] * 8, [e.history for e in examples], [e.response for e in examples]
    losses = model.fit(prefixes, histories, targets, FitConfig(steps=30, batch_size=8, lr=3e-3))
    assert losses[-1] < 0.6 * losses[0]
    model.save(tmp_path, "responder")
    loaded, _ = Seq2Seq.load(tmp_path, "responder")
    torch.testing.assert_close(
        loaded.score(prefixes, histories, targets)[0], model.score(prefixes, histories, targets)[0]
    )
    with pytest.raises(ValueError, match="expected 'generator'"):
        Seq2Seq.load(tmp_path, "generator")


def test_approximator_reads_the_bank_and_round_trips(vocab: DialogueVocab, episodes: list[dict], tmp_path) -> None:
    examples = persona_examples(episodes)
    bank = persona_bank(episodes)
    cfg = PredictorConfig(
        kind="approximator", model=TINY, fit=FitConfig(steps=5, batch_size=8), threshold=-1.0, top_k=3,
        sentence_encoder="bert-tiny",
    )  # fmt: skip
    predictor = PersonaApproximator.train(examples, vocab, bank, cfg)
    facts = predictor.predict([examples[3].history], ["partner"])[0]
    assert len(facts) == 3 and all(s in bank for s, _ in facts)
    assert [v for _, v in facts] == sorted((v for _, v in facts), reverse=True)
    predictor.save(tmp_path)
    again = load_predictor(tmp_path, {"threshold": -1.0})
    reloaded = again.predict([examples[3].history], ["partner"])[0]
    assert [s for s, _ in reloaded] == [s for s, _ in facts]
    assert [v for _, v in reloaded] == pytest.approx([v for _, v in facts])


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
