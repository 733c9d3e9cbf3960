"""``grainvl davinci caption`` / ``grainvl davinci answer``: caption images and answer questions with DaVinci from
the command line (issue 17, "Done when"), on the downstream tasks' own inference code.

``model`` is anything :func:`~grainvl.models.factory.resolve_model` reads as a DaVinci (a ``davinci pretrain`` run
folder, a ``save_pretrained`` folder, a preset) or a fine-tuned run folder (``grainvl finetune captioning|vqa``,
read back with :func:`~grainvl.recipes.finetune.load_finetuned`; a run fine-tuned on another task lends its backbone).

* **Caption.** A fine-tuned captioning run captions exactly as :class:`DaVinciCaptioningTask` tests: image + empty
  text in the encoder, ``[CLS] + prompt`` in the decoder, beam search over text ids, the prompt not returned
  (:meth:`DaVinciCaptionModule.generate`). Any other DaVinci captions **zero-shot** the way pre-training's prefix LM
  taught it (SimVLM's zero-shot captioning): the prompt is the encoder's text prefix beside the image, and the
  decoder writes the rest of the caption from ``[CLS]`` with the same beam search.
* **Answer.** With an answer list (``answers``: an official ``answer_list.json``; else a fine-tuned vqa run's own,
  recorded in its ``task.json``) the list is ranked as :class:`DaVinciVQATask` tests: first-token top-``k``, then
  full-answer log-likelihood re-ranking (:func:`rank_answers`). Without one the answer is generated freely (DaVinci's
  generative VQA): image + question in the encoder, the decoder writes from ``[CLS]`` (greedy or beam over text ids).
  Either way an answer's score is its full log-likelihood ``log p([CLS] answer [SEP])`` over the joint vocabulary.
* **Images** are read with PIL, made RGB and put through the tasks' test transform at the model's geometry
  (:func:`davinci_data_config`: bicubic stretch to the preset's resolution, pixels in [0, 1]).

Bad input is a one-line :class:`DataError`: a missing or unreadable image (named), an empty or over-long
question, an over-long prompt, a model that is not a DaVinci (an X²-VLM run says so).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from grainvl.data.downstream_gen import tokenize
from grainvl.data.formats.albef import read_answer_list
from grainvl.data.masking import pre_question
from grainvl.data.pretrain import flip_transforms, to_rgb
from grainvl.errors import DataError
from grainvl.models.davinci import DaVinci
from grainvl.models.decoder import SearchConfig
from grainvl.models.factory import ResolvedModel, get_tokenizer, load_davinci_model, resolve_model
from grainvl.recipes.finetune import load_finetuned
from grainvl.tasks.base import TASK_FILE
from grainvl.tasks.davinci_downstream import (
    DaVinciCaptionModule,
    DaVinciVQAModule,
    DaVinciVQATask,
    davinci_data_config,
)
from grainvl.tasks.registry import get_task

BATCH = 16  # images per forward pass
# VQADataset never cuts a test question below 50 words (official max_ques_words at test time); longer is refused.
TEST_QUESTION_WORDS = 50
FAMILY_NAMES = {"vl": "an X²-VLM vision-language model", "text": "a text encoder"}


@dataclass
class CaptionConfig:
    model: str = ""
    """A DaVinci: ``davinci pretrain`` run, ``save_pretrained`` folder, preset, or a fine-tuned run folder."""
    images: tuple[str, ...] = ()
    prompt: str | None = None
    """The caption's opening words; None: the captioning task's (the fine-tuned run's), ``"a picture of "``."""
    beams: int = 0  # 0: the captioning task's (2)
    max_length: int = 0  # generated tokens with [SEP]; 0: the captioning task's (20)


@dataclass
class AnswerConfig:
    model: str = ""
    """A DaVinci: ``davinci pretrain`` run, ``save_pretrained`` folder, preset, or a fine-tuned run folder."""
    images: tuple[str, ...] = ()
    question: str = ""
    answers: str = ""
    """An official ``answer_list.json`` to rank; empty: the fine-tuned vqa run's list, else free generation."""
    k: int = 0  # first-token shortlist of the ranking; 0: the run's k_test, else 128 (official)
    top: int = 5  # ranked answers printed per image
    beams: int = 1  # free generation only: 1 is greedy
    max_length: int = 10  # free generation only: answer tokens with [SEP]


# ---------------------------------------------------------------------------------------------- inputs
def read_image(path: str | Path) -> Image.Image:
    """The file as an RGB PIL image (fully decoded), or a one-line DataError naming it."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)  # convert() decodes everything: a truncated file fails here
    except FileNotFoundError:
        raise DataError(path, None, "image not found") from None
    except IsADirectoryError:
        raise DataError(path, None, "is a folder, not an image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, None, f"cannot read the image: {e}") from None


def load_images(paths: Sequence[str], model: DaVinci) -> Tensor:
    """Images (N, 3, R, R) in [0, 1] through the tasks' test transform at the model's resolution."""
    if not paths:
        raise ValueError("give at least one --image FILE")
    _, transform = flip_transforms("test", davinci_data_config(model, augment=False))  # the no-flip test transform
    return torch.stack([transform(read_image(p))[0] for p in paths])


def clean_question(question: str, tokenizer: Any, model: DaVinci) -> str:
    """The question as :class:`VQADataset` cleans it (``pre_question``), or a DataError when it is empty or
    longer than the test limit (words) or the encoder's text positions (word pieces)."""
    if not re.search(r"\w", question):  # pre_question keeps "?", so test for a word first
        raise DataError("--question", None, "empty question")
    cleaned = pre_question(question, max_words=10_000)
    words = len(cleaned.split(" "))
    if words > TEST_QUESTION_WORDS:
        raise DataError("--question", None, f"question is {words} words, the limit is {TEST_QUESTION_WORDS}")
    pieces, limit = len(tokenizer.encode(cleaned, add_special_tokens=False)), model.config.max_text_positions - 2
    if pieces > limit:
        raise DataError("--question", None, f"question is {pieces} word pieces, the model's limit is {limit}")
    return cleaned


def check_lengths(model: DaVinci, prompt_ids: Sequence[int], max_length: int, prompt_in_encoder: bool) -> None:
    """The prompt and the generated tokens must fit the encoder's text and the decoder's positions."""
    cfg = model.config
    if prompt_in_encoder and len(prompt_ids) > cfg.max_text_positions - 2:
        limit = cfg.max_text_positions - 2
        raise DataError("--prompt", None, f"prompt is {len(prompt_ids)} word pieces, the model's limit is {limit}")
    # The decoder reads [CLS] (+ the prompt) and then every generated token but the last (EOS is never fed back).
    start = 1 + (0 if prompt_in_encoder else len(prompt_ids))
    if start + max_length - 1 > cfg.decoder_positions:
        flag = "--prompt" if start >= cfg.decoder_positions else "--max-length"
        raise DataError(
            flag,
            None,
            f"{start - 1} prompt + {max_length} generated tokens do not fit the decoder's {cfg.decoder_positions} "
            "positions",
        )


# ---------------------------------------------------------------------------------------------- models
def resolve_davinci(source: str) -> ResolvedModel:
    """The DaVinci behind ``source`` or a one-line DataError saying what it is instead."""
    if not source:
        raise ValueError("give --model: a DaVinci run folder (pretrain or fine-tuned), model folder or preset")
    resolved = resolve_model(source)
    if resolved.family != "davinci":
        what = FAMILY_NAMES.get(resolved.family, resolved.family)
        raise DataError(source, None, f"{what} ({resolved.kind}), not a DaVinci; give a DaVinci run, folder or preset")
    return resolved


def finetuned_task(source: str) -> str | None:
    """The task a fine-tuned run folder was fine-tuned on (its ``task.json``), None for any other model."""
    meta = Path(source) / TASK_FILE
    return str(json.loads(meta.read_text(encoding="utf-8"))["task"]) if meta.is_file() else None


def load_backbone(source: str, task: str) -> tuple[DaVinci, Any, dict[str, Any] | None]:
    """``(model, tokenizer, the run's task options)``: a run fine-tuned on ``task`` is reloaded exactly
    (:func:`load_finetuned`, options from its ``task.json``); any other DaVinci gives options None."""
    resolved = resolve_davinci(source)
    if finetuned_task(source) == task:
        run_task, module, tokenizer = load_finetuned(source)
        return module.model, tokenizer, dict(run_task.options)
    return load_davinci_model(resolved).eval(), get_tokenizer(resolved), None


# ---------------------------------------------------------------------------------------------- caption
def caption_module(cfg: CaptionConfig) -> tuple[DaVinciCaptionModule, bool]:
    """The captioning module (the fine-tuned run's settings, else the task's defaults, then the flags) and
    whether ``cfg.model`` is a fine-tuned captioning run."""
    model, tokenizer, options = load_backbone(cfg.model, "captioning")
    flags = {"prompt": cfg.prompt, "num_beams": cfg.beams or None, "max_length": cfg.max_length or None}
    settings = {**(options or {}), **{k: v for k, v in flags.items() if v is not None}}
    module = get_task("captioning", "davinci", **settings).build(model, Path("."), tokenizer)
    assert isinstance(module, DaVinciCaptionModule)
    finetuned = options is not None
    check_lengths(model, module.prompt_ids, module.search.max_length, prompt_in_encoder=not finetuned)
    return module.eval(), finetuned


@torch.no_grad()
def caption_batch(module: DaVinciCaptionModule, images: Tensor, finetuned: bool) -> list[str]:
    """Captions of images (B, 3, R, R): the captioning task's path, or zero-shot with the prompt as the encoder's
    prefix (pre-training's PLM: encoder image + ``[CLS] prompt [SEP]``, decoder from ``[CLS]``)."""
    if finetuned:
        return module.generate(images)
    cfg = module.model.config
    prefix = torch.tensor([[cfg.cls_token_id, *module.prompt_ids, cfg.sep_token_id]]).expand(images.shape[0], -1)
    states, atts = module.model.encode(images, prefix)  # (B, T, H)
    sequences = module.model.generate_text_from_states(states, atts, (), module.search)
    return [module.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in sequences]


def caption_mode(module: DaVinciCaptionModule, finetuned: bool) -> str:
    prompt = module.tokenizer.decode(module.prompt_ids).strip()
    search = f"beam {module.search.num_beams}, at most {module.search.max_length} tokens"
    if finetuned:
        return f"fine-tuned captioning run: decoder prompt {prompt!r} (not printed), {search}"
    return f"zero-shot (pre-trained, not fine-tuned for captioning): {prompt!r} as the encoder's text prefix, {search}"


def run_caption(cfg: CaptionConfig) -> dict[str, Any]:
    """-> ``{"mode": how the captions were made, "results": [{"image", "caption"}, ...]}`` in ``cfg.images`` order."""
    module, finetuned = caption_module(cfg)
    images = load_images(cfg.images, module.model)  # every file is read before the first caption
    captions = [
        c
        for start in range(0, len(images), BATCH)
        for c in caption_batch(module, images[start : start + BATCH], finetuned)
    ]
    mode = caption_mode(module, finetuned)
    return {"mode": mode, "results": [{"image": p, "caption": c, "mode": mode} for p, c in zip(cfg.images, captions)]}


# ---------------------------------------------------------------------------------------------- answer
Ranked = list[tuple[str, float]]  # (answer, full log-likelihood), best first


def answer_module(cfg: AnswerConfig) -> tuple[DaVinci, Any, DaVinciVQAModule | None, str]:
    """``(model, tokenizer, the ranking module or None for free generation, where the answer list came from)``."""
    model, tokenizer, options = load_backbone(cfg.model, "vqa")
    options = options or {}
    if cfg.answers:
        answers, source = read_answer_list(cfg.answers), cfg.answers
        if not answers:
            raise DataError(cfg.answers, None, "the answer list is empty")
    else:
        answers, source = options.get("answers"), "the fine-tuned vqa run's answer list"
    if not answers:
        return model, tokenizer, None, ""
    k = cfg.k or options.get("k_test") or DaVinciVQATask.default_options["k_test"]
    module = get_task("vqa", "davinci", answers=answers, k_test=k).build(model, Path("."), tokenizer)
    assert isinstance(module, DaVinciVQAModule)
    return model, tokenizer, module.eval(), source


@torch.no_grad()
def rank_batch(module: DaVinciVQAModule, images: Tensor, ids: Tensor, atts: Tensor, top: int) -> list[Ranked]:
    """:meth:`DaVinciVQAModule.predict`'s ranking with the scores and ``top`` answers per image."""
    best, scores = module.rank(images, ids, atts)  # (B, k) each
    return [
        [(module.answers[i], s) for i, s in zip(row[:top], row_scores[:top])]
        for row, row_scores in zip(best.tolist(), scores.tolist())
    ]


@torch.no_grad()
def generate_batch(
    model: DaVinci, tokenizer: Any, images: Tensor, ids: Tensor, atts: Tensor, search: SearchConfig
) -> list[Ranked]:
    """Free answers (one per image) with their full log-likelihood, as :func:`rank_answers` scores a listed one."""
    cfg = model.config
    states, enc_atts = model.encode(images, ids, atts)  # (B, T, H)
    sequences = model.generate_text_from_states(states, enc_atts, (), search)
    rows = [torch.tensor([cfg.cls_token_id, *s, cfg.sep_token_id]) for s in sequences]
    answer_ids = pad_sequence(rows, batch_first=True, padding_value=cfg.pad_token_id)  # (B, La)
    answer_atts = pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
    scores = model.decoder.sequence_logprob(answer_ids, answer_atts, states, enc_atts)  # (B,)
    return [[(tokenizer.decode(s, skip_special_tokens=True).strip(), float(x))] for s, x in zip(sequences, scores)]


def run_answer(cfg: AnswerConfig) -> dict[str, Any]:
    """-> ``{"mode", "question", "results": [{"image", "question", "answers": [{"answer", "score"}]}, ...]}``."""
    if cfg.top < 1:
        raise ValueError(f"--top must be >= 1, got {cfg.top}")
    model, tokenizer, module, source = answer_module(cfg)
    question = clean_question(cfg.question, tokenizer, model)
    images = load_images(cfg.images, model)
    search = SearchConfig(num_beams=cfg.beams, max_length=cfg.max_length, min_length=1, no_repeat_ngram=0)
    if module is None:
        check_lengths(model, (), search.max_length, prompt_in_encoder=False)
        mode = f"free generation (no answer list): beam {search.num_beams}, at most {search.max_length} tokens"
    else:
        shortlist = min(module.k_test, len(module.answers))
        mode = f"ranked {len(module.answers)} answers of {source}: first-token top-{shortlist}, full re-ranking"
    results = []
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH]
        ids, atts = tokenize(tokenizer, [question] * len(batch), None)  # (b, L), as the VQA test batches
        if module is None:
            results += generate_batch(model, tokenizer, batch, ids, atts, search)
        else:
            results += rank_batch(module, batch, ids, atts, cfg.top)
    rows = [
        {"image": p, "question": question, "answers": [{"answer": a, "score": s} for a, s in r], "mode": mode}
        for p, r in zip(cfg.images, results)
    ]
    return {"mode": mode, "question": question, "results": rows}


# ---------------------------------------------------------------------------------------------- output
def format_captions(report: dict[str, Any], as_json: bool) -> str:
    """``path<TAB>caption`` per image, or the results as a JSON list."""
    if as_json:
        return json.dumps(report["results"], indent=2, ensure_ascii=False)
    return "\n".join(f"{r['image']}\t{r['caption']}" for r in report["results"])


def format_answers(report: dict[str, Any], as_json: bool) -> str:
    """``path<TAB>answer<TAB>score`` per answer, best first per image, or the results as a JSON list."""
    if as_json:
        return json.dumps(report["results"], indent=2, ensure_ascii=False)
    return "\n".join(f"{r['image']}\t{a['answer']}\t{a['score']:.4f}" for r in report["results"] for a in r["answers"])
