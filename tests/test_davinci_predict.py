"""``grainvl davinci caption`` / ``answer`` (recipes/davinci_predict.py) on davinci-tiny: a fine-tuned run captions
and ranks exactly as its task's test does, zero-shot captions and free answers match a hand-written greedy decode,
the output forms, and every bad-input branch (one line, exit 2)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from grainvl.cli import main
from grainvl.config import load_config
from grainvl.data.downstream_gen import CaptionEvalDataset, VQADataset
from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
from grainvl.errors import DataError
from grainvl.models.davinci import DaVinci
from grainvl.models.decoder import SearchConfig
from grainvl.models.factory import load_davinci_model, load_model, resolve_model
from grainvl.recipes.davinci_predict import (
    AnswerConfig,
    CaptionConfig,
    load_images,
    run_answer,
    run_caption,
)
from grainvl.recipes.finetune import FinetuneConfig, finetune, load_finetuned
from grainvl.tasks.base import image_root
from grainvl.tasks.captioning import caption_file
from grainvl.tasks.davinci_downstream import rank_answers
from grainvl.tasks.vqa import vqa_file

QUIET = ["train.progress=false", "train.tensorboard=false", "train.save_final=false", "train.ckpt_every=0"]
QUESTION = "What shape is the brown object?"


def _finetune(out: Path, world: Path, task: str) -> Path:
    """A 2-step davinci-tiny fine-tune of ``task`` (no evaluation) -> its run folder."""
    overrides = [
        *QUIET,
        f"task={task}",
        "model=davinci-tiny",
        f"world={world}",
        f"train.run_dir={out}",
        "train.steps=2",
        "data.batch_size=2",
        "optim.lr=1e-3",
        "eval_splits=[]",
    ]
    finetune(load_config(FinetuneConfig, None, overrides))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, vlue_world: Path) -> dict[str, Path]:
    """Fine-tuned captioning and vqa runs, and a random pre-trained davinci-tiny folder (with its tokenizer)."""
    root = tmp_path_factory.mktemp("dvpredict")
    torch.manual_seed(0)
    # Weights 10x wider than the preset's init: at 0.02 a random tiny model writes the same words whatever the
    # encoder's text, and the tests could not tell a question (or prompt) in the encoder from none.
    config = dataclasses.replace(resolve_model("davinci-tiny").config, initializer_range=0.2)
    pretrained = DaVinci(config).save_pretrained(root / "dv", tokenizer=load_tokenizer(packaged_minilm_path()))
    return {
        "captioning": _finetune(root / "captioning", vlue_world, "captioning"),
        "vqa": _finetune(root / "vqa", vlue_world, "vqa"),
        "pretrained": pretrained,
    }


def _greedy(model: DaVinci, image: torch.Tensor, encoder_ids: list[int], steps: int, min_length: int) -> list[int]:
    """Reference decode: full teacher-forced decoder pass per step, arg-max over text ids, [SEP] barred before
    ``min_length`` tokens; the decoder starts from [CLS]."""
    cfg = model.config
    states, atts = model.encode(image[None], torch.tensor([encoder_ids]))
    ids: list[int] = [cfg.cls_token_id]
    for t in range(steps):
        logits = model.decode(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), states, atts)[0, -1]
        logits[cfg.text_vocab_size :] = float("-inf")
        if t < min_length:
            logits[cfg.sep_token_id] = float("-inf")
        token = int(logits.argmax())
        if token == cfg.sep_token_id:
            break
        ids.append(token)
    return ids[1:]


# ---------------------------------------------------------------------------------------------- caption
def test_finetuned_caption_is_the_captioning_tasks_generate(runs: dict[str, Path], vlue_world: Path) -> None:
    task, module, tokenizer = load_finetuned(runs["captioning"])
    data = CaptionEvalDataset(
        caption_file(vlue_world, "test"),
        image_root(vlue_world, "captioning"),
        tokenizer,
        task.data_config(module, False),
    )
    batch = data.collate([data[0], data[1]])
    paths = [str(image_root(vlue_world, "captioning") / data.records[i]["image"]) for i in (0, 1)]
    # The same pixels as the task's test transform, then the same captions.
    assert torch.equal(load_images(paths, module.model), batch["image"])
    report = run_caption(CaptionConfig(model=str(runs["captioning"]), images=tuple(paths)))
    assert [r["caption"] for r in report["results"]] == module.generate(batch["image"])
    assert [r["image"] for r in report["results"]] == paths
    assert report["mode"].startswith("fine-tuned captioning run")


def test_generate_text_from_states_matches_generate_text(runs: dict[str, Path], vlue_world: Path) -> None:
    model = load_davinci_model(runs["pretrained"]).eval()
    cfg = model.config
    images = torch.rand(2, 3, cfg.image_resolution, cfg.image_resolution)
    empty = torch.tensor([[cfg.cls_token_id, cfg.sep_token_id]]).expand(2, -1)
    for search in (SearchConfig(num_beams=1, max_length=6, min_length=2), SearchConfig(num_beams=3, max_length=6)):
        states, atts = model.encode(images, empty)
        ours = model.generate_text_from_states(states, atts, [1037, 3861], search)
        assert ours == model.generate_text(images, [1037, 3861], search)


def test_zero_shot_caption_puts_the_prompt_in_the_encoder(runs: dict[str, Path], vlue_world: Path) -> None:
    path = str(next((vlue_world / "images" / "test").iterdir()))
    cfg = CaptionConfig(model=str(runs["pretrained"]), images=(path,), prompt="a picture of", beams=1, max_length=7)
    report = run_caption(cfg)
    model = load_davinci_model(runs["pretrained"]).eval()
    tokenizer = load_tokenizer(packaged_minilm_path())
    prompt = tokenizer.encode("a picture of", add_special_tokens=False)
    c = model.config
    image = load_images([path], model)[0]
    expected = _greedy(model, image, [c.cls_token_id, *prompt, c.sep_token_id], 7, 5)
    # The captioning task's layout (prompt in the decoder) writes something else from this model.
    states, atts = model.encode(image[None], torch.tensor([[c.cls_token_id, c.sep_token_id]]))
    assert expected != model.generate_text_from_states(states, atts, prompt, SearchConfig(1, 7, 5, 0.0, 0))[0]
    assert report["results"][0]["caption"] == tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert report["mode"].startswith("zero-shot") and "'a picture of' as the encoder's text prefix" in report["mode"]


# ---------------------------------------------------------------------------------------------- answer
def test_answer_ranking_is_the_vqa_tasks(runs: dict[str, Path], vlue_world: Path) -> None:
    task, module, tokenizer = load_finetuned(runs["vqa"])
    root = image_root(vlue_world, "vqa")
    data = VQADataset(vqa_file(vlue_world, "test"), root, tokenizer, task.data_config(module, False), False)
    record = data.records[0]
    batch = data.collate([data[0]])
    states, atts = module.model.encode(batch["image"], batch["question_ids"], batch["question_atts"])
    best, scores = rank_answers(
        module.model.decoder, module.answer_ids, module.answer_atts, states, atts, task.options["k_test"]
    )
    n = len(module.answers)
    report = run_answer(
        AnswerConfig(model=str(runs["vqa"]), images=(str(root / record["image"]),), question=record["question"], top=n)
    )
    answers = report["results"][0]["answers"]
    assert [a["answer"] for a in answers] == [module.answers[i] for i in best[0].tolist()]
    assert [a["score"] for a in answers] == pytest.approx(scores[0].tolist(), abs=1e-5)
    assert answers[0]["answer"] == module.predict(batch["image"], batch["question_ids"], batch["question_atts"])[0]
    assert "the fine-tuned vqa run's answer list" in report["mode"] and len(answers) == min(n, 128)


def test_answers_file_replaces_the_runs_list(runs: dict[str, Path], vlue_world: Path, tmp_path: Path) -> None:
    listed = tmp_path / "answer_list.json"
    listed.write_text(json.dumps(["red", "circle", "two"]))
    path = str(next((vlue_world / "images" / "test").iterdir()))
    cfg = AnswerConfig(model=str(runs["vqa"]), images=(path,), question=QUESTION, answers=str(listed), top=2)
    report = run_answer(cfg)
    answers = report["results"][0]["answers"]
    assert len(answers) == 2 and {a["answer"] for a in answers} <= {"red", "circle", "two"}
    assert answers[0]["score"] >= answers[1]["score"] and str(listed) in report["mode"]


def test_free_answer_without_a_list_is_generated(runs: dict[str, Path], vlue_world: Path) -> None:
    path = str(next((vlue_world / "images" / "test").iterdir()))
    report = run_answer(AnswerConfig(model=str(runs["pretrained"]), images=(path,), question=QUESTION, max_length=4))
    model = load_davinci_model(runs["pretrained"]).eval()
    tokenizer = load_tokenizer(packaged_minilm_path())
    question = tokenizer.encode("what shape is the brown object?")  # pre_question: lower case, "?" kept
    image = load_images([path], model)[0]
    expected = _greedy(model, image, question, 4, 1)
    c = model.config
    assert expected != _greedy(model, image, [c.cls_token_id, c.sep_token_id], 4, 1)  # the question matters
    (answer,) = report["results"][0]["answers"]
    assert answer["answer"] == tokenizer.decode(expected, skip_special_tokens=True).strip()
    # The score is the answer's full log-likelihood, as rank_answers' second stage scores a listed answer.
    c = model.config
    with torch.no_grad():
        states, atts = model.encode(load_images([path], model), torch.tensor([question]))
        ids = torch.tensor([[c.cls_token_id, *expected, c.sep_token_id]])
        score = float(model.decoder.sequence_logprob(ids, torch.ones_like(ids), states, atts)[0])
    assert answer["score"] == pytest.approx(score, abs=1e-4)
    assert report["mode"].startswith("free generation")


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_text_and_json(runs: dict[str, Path], vlue_world: Path, capsys: pytest.CaptureFixture) -> None:
    paths = [str(p) for p in sorted((vlue_world / "images" / "test").iterdir())[:2]]
    images = [arg for p in paths for arg in ("--image", p)]
    assert main(["davinci", "caption", "--model", str(runs["captioning"]), *images]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == paths and all(line.count("\t") == 1 for line in lines)
    assert "fine-tuned captioning run" in err
    assert main(["davinci", "caption", "--model", str(runs["captioning"]), *images, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == paths and [r["caption"] for r in rows] == [
        line.split("\t")[1] for line in lines
    ]
    assert main(["davinci", "answer", "--model", str(runs["vqa"]), *images, "--question", QUESTION, "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [paths[0]] * 3 + [paths[1]] * 3
    first = [float(line.split("\t")[2]) for line in lines[:3]]
    assert first == sorted(first, reverse=True)
    assert main(["davinci", "answer", "--model", str(runs["vqa"]), *images, "--question", QUESTION, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == paths and all(len(r["answers"]) == 5 for r in rows)


@pytest.fixture(scope="module")
def xvlm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("xvlm_run")
    load_model("xvlm-tiny", init_unimodal=False).save_pretrained(run / "model")
    return run


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing image", "nope.png: image not found"),
        ("unreadable image", "not_an_image.png: cannot read the image"),
        ("empty question", "--question: empty question"),
        ("long question (words)", "--question: question is 51 words, the limit is 50"),
        ("long question (pieces)", "--question: question is 110 word pieces, the model's limit is 62"),
        ("long prompt", "--prompt: prompt is 70 word pieces, the model's limit is 62"),
        ("long caption", "--max-length: 3 prompt + 70 generated tokens do not fit the decoder's 64 positions"),
        ("empty answer list", "the answer list is empty"),
        ("X²-VLM run", "an X²-VLM vision-language model (run), not a DaVinci"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    runs: dict[str, Path],
    vlue_world: Path,
    xvlm_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    case: str,
    message: str,
) -> None:
    image = str(next((vlue_world / "images" / "test").iterdir()))
    (tmp_path / "not_an_image.png").write_text("hello")
    (tmp_path / "empty.json").write_text("[]")
    model, question, extra = str(runs["pretrained"]), QUESTION, []
    command = "answer"
    if case == "missing image":
        image = str(tmp_path / "nope.png")
    elif case == "unreadable image":
        image = str(tmp_path / "not_an_image.png")
    elif case == "empty question":
        question = " ?! "
    elif case == "long question (words)":
        question = "red " * 51
    elif case == "long question (pieces)":
        question = "supercalifragilisticexpialidocious " * 10  # 10 words, 110 word pieces
    elif case == "long prompt":
        command, extra = "caption", ["--prompt", "red " * 70]
    elif case == "long caption":  # the fine-tuned run: its prompt "a picture of" is in the decoder
        command, model, extra = "caption", str(runs["captioning"]), ["--max-length", "70"]
    elif case == "empty answer list":
        extra = ["--answers", str(tmp_path / "empty.json")]
    elif case == "X²-VLM run":
        model = str(xvlm_run)
    args = ["davinci", command, "--model", model, "--image", image, *extra]
    args += ["--question", question] if command == "answer" else []
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_run_functions_raise_data_error_naming_the_file(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.jpg: image not found"):
        run_caption(CaptionConfig(model=str(runs["pretrained"]), images=(str(tmp_path / "missing.jpg"),)))
    with pytest.raises(ValueError, match="at least one --image"):
        run_caption(CaptionConfig(model=str(runs["pretrained"])))
