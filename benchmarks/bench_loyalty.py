"""Loyalty and robustness of compressed text classifiers, side by side (Xu et al., arXiv 2109.03228).

Setting of the paper, at world scale: a teacher = the packaged MiniLM (all-MiniLM-L6-v2, 6 layers)
fine-tuned on a GLUE-format world task; compressed five ways; every model measured in one run:

* ``int8``: dynamic int8 quantisation of every Linear (:mod:`grainvl.compress.quantize`);
* ``prune``: the toolkit's hard-concrete L0 engine (:class:`grainvl.compress.prune.ModalPruner`) on
  the tower's heads and FFN neurons with the Lagrangian target, trained with task CE + logit KD from
  the teacher, then physically shrunk (the shrink code of :mod:`grainvl.compress.shrink`);
* ``distill-3L``: a 3-layer student initialised from teacher layers 1, 3, 5 (``uniform_layers``), trained
  with 0.5·CE + 0.5·KL(teacher ‖ student) on logits (temperature 1);
* ``theseus-3L``: BERT-of-Theseus with the linear scheduler (:mod:`grainvl.compress.theseus`);
* combinations ``distill-3L+int8`` and ``theseus-3L+int8`` (post-training quantisation of a smaller
  model; which stack the paper recommends is unverified, see docs/loyalty.md).

Columns: dev accuracy, label loyalty, probability loyalty (base 2), TextFooler-style attack success
rate and accuracy under attack (:mod:`grainvl.compress.attack`, offline synonym table + MiniLM
sentence similarity), serialised size (MB) and the batch-1 latency speed-up over the teacher (timed
interleaved with the teacher in this process). Nothing here is hard-coded: every figure is measured.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_loyalty.py   # ~450 CPU-seconds (minutes on 2 idle cores)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_loyalty.py --world W --tasks color_sst --json out.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grainvl.compress.attack import AttackConfig, SentenceSimilarity, WordSubstitutionAttack
from grainvl.compress.loyalty import loyalty_from_probs
from grainvl.compress.quantize import median_latency_ms, quantize_dynamic_int8, serialized_size
from grainvl.compress.theseus import TheseusConfig
from grainvl.models.text import BertEncoderModel
from grainvl.tasks.text_classification import (
    GlueTask,
    TextClassifier,
    TextFinetuneConfig,
    batch_order,
    finetune_text_classifier,
    load_glue_task,
    seed_everything,
)
from grainvl.tasks.theseus import train_theseus_classifier


# ------------------------------------------------------------------------------------------ data
def make_world(out: Path, seed: int) -> Path:
    """A world with only what this benchmark reads (the text suite); images are a token 4 at 64 px."""
    from grainvl.data.world.generate import WorldConfig, generate_world

    generate_world(
        WorldConfig(
            images=4, videos=0, resolution=64, dialogues=0, text_scenes=300, text_train=400, text_dev=150, seed=seed
        ),
        out,
    )
    return out


def _batches(model: TextClassifier, task: GlueTask, batch_size: int, steps: int, seed: int):
    order = batch_order(len(task.train_texts), batch_size, steps, seed)
    targets = torch.tensor(task.train_targets)

    def get(step: int) -> tuple[dict[str, Tensor], Tensor]:
        picked = order[step]
        return model.encode([task.train_texts[i] for i in picked]), targets[picked].long()

    return get


def _train(model: nn.Module, params: list[dict[str, Any]], steps: int, loss_at) -> list[float]:
    """AdamW + linear decay with 10% warm-up (the HF GLUE recipe), clip 1.0."""
    optimizer = torch.optim.AdamW(params, betas=(0.9, 0.999), eps=1e-8)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    model.train()
    losses = []
    for step in range(steps):
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], 1.0)
        optimizer.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def _kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
    """0.5·CE + 0.5·KL(softmax(teacher) ‖ softmax(student)) at temperature 1 (DistilBERT-style, logits only)."""
    kl = F.kl_div(student_logits.log_softmax(-1), teacher_logits.softmax(-1), reduction="batchmean")
    return 0.5 * F.cross_entropy(student_logits, labels) + 0.5 * kl


# ------------------------------------------------------------------------------------------ compressors
def distill_classifier(
    teacher: TextClassifier, task: GlueTask, layers: list[int], steps: int, lr: float, seed: int
) -> TextClassifier:
    """A student keeping teacher layers ``layers`` (embeddings, pooler and head copied), trained with KD."""
    seed_everything(seed)
    config = dataclasses.replace(teacher.encoder.config, num_layers=len(layers), fusion_start=len(layers))
    tower = BertEncoderModel(config)
    state = {}
    for key, value in teacher.encoder.state_dict().items():
        if key.startswith("encoder.layer."):
            index = int(key.split(".")[2])
            if index not in layers:
                continue
            key = f"encoder.layer.{layers.index(index)}." + key.split(".", 3)[3]
        state[key] = value
    tower.load_state_dict(state)
    student = copy.deepcopy(teacher)
    student.encoder = tower
    batches = _batches(student, task, 16, steps, seed)

    def loss_at(step: int) -> Tensor:
        inputs, labels = batches(step)
        with torch.no_grad():
            teacher_logits = teacher(**inputs)
        return _kd_loss(student(**inputs), teacher_logits, labels)

    _train(student, [{"params": list(student.parameters()), "lr": lr, "weight_decay": 0.01}], steps, loss_at)
    return student


def prune_classifier(
    teacher: TextClassifier, task: GlueTask, target: float, steps: int, lr: float, seed: int
) -> tuple[TextClassifier, dict[str, Any]]:
    """Hard-concrete head + FFN pruning of the text tower with the toolkit's engine, then physical removal."""
    from grainvl.compress.prune import ModalPruner, PruneConfig
    from grainvl.compress.shrink import shrink_text_tower

    seed_everything(seed)
    student = copy.deepcopy(teacher)
    # The engine reads ``model.bert`` and ``model.config.text``: a text classifier's tower is exactly that stack.
    view = SimpleNamespace(bert=student.encoder, config=SimpleNamespace(text=student.encoder.config))
    cfg = PruneConfig(target_sparsity=target, modalities=("text",), warmup_steps=max(1, steps // 2), reg_lr=0.05)
    pruner = ModalPruner(view, cfg)  # type: ignore[arg-type]
    batches = _batches(student, task, 16, steps, seed)

    def loss_at(step: int) -> Tensor:
        pruner.on_step(step)
        pruner.train()
        pruner.refresh()
        inputs, labels = batches(step)
        with torch.no_grad():
            teacher_logits = teacher(**inputs)
        lagrangian, _ = pruner.lagrangian()
        return _kd_loss(student(**inputs), teacher_logits, labels) + lagrangian

    groups = [{"params": list(student.parameters()), "lr": lr, "weight_decay": 0.01}]
    groups += [{**g, "params": [p for _, p in g["params"]]} for g in pruner.param_groups()]
    _train(student, groups, steps, loss_at)
    masks = pruner.final_masks()
    achieved = pruner.achieved_sparsity()
    pruner.detach()
    small = shrink_text_tower(student.encoder, masks)
    heads, ffn = small.config.layer_heads, small.config.layer_intermediate
    student.encoder = small.eval()
    return student, {"target": target, "achieved": achieved.get("all"), "heads": heads, "ffn": ffn}


# ------------------------------------------------------------------------------------------ measuring
def latency_ratio(
    teacher: nn.Module, model: nn.Module, inputs: dict[str, Tensor], rounds: int = 4
) -> tuple[float, float]:
    """(teacher ms, model ms) medians of batch-1 forwards, interleaved so load hits both alike; the
    order alternates each round so neither model always runs right after the other's warm-up."""
    t_times: list[float] = []
    m_times: list[float] = []
    for i in range(rounds):
        pair = [(teacher, t_times), (model, m_times)]
        for net, sink in pair if i % 2 == 0 else pair[::-1]:
            sink.append(median_latency_ms(lambda net=net: net(**inputs), warmup=1, repeats=5))
    return statistics.median(t_times), statistics.median(m_times)


def measure(
    name: str,
    model: TextClassifier,
    teacher: TextClassifier,
    teacher_probs: np.ndarray,
    task: GlueTask,
    dev: int,
    attack_n: int,
    similarity: SentenceSimilarity,
    budget: float,
) -> dict[str, Any]:
    texts, labels = task.dev_texts[:dev], np.asarray(task.dev_targets[:dev], dtype=int)
    probs = teacher_probs if model is teacher else model.predict_proba(texts)
    loyalty = loyalty_from_probs(teacher_probs, probs, labels)
    attack = WordSubstitutionAttack(model, similarity=similarity, cfg=AttackConfig(max_change_fraction=budget))
    summary, _ = attack.run(texts[:attack_n], labels[:attack_n].tolist())
    single = model.encode(texts[:1])
    t_ms, m_ms = latency_ratio(teacher, model, single)
    return {
        "model": name,
        "accuracy": loyalty.student_accuracy,
        "label_loyalty": loyalty.label_loyalty,
        "prob_loyalty": loyalty.probability_loyalty,
        "attack_success": summary.attack_success_rate,
        "acc_under_attack": summary.accuracy_under_attack,
        "perturbed": summary.mean_perturbed_fraction,
        "size_MB": serialized_size(model) / 1e6,
        "speedup": t_ms / m_ms,
        "latency_ms": m_ms,
    }


COLUMNS = (
    ("model", "{:<16}"),
    ("accuracy", "{:>6.3f}"),
    ("label_loyalty", "{:>6.3f}"),
    ("prob_loyalty", "{:>6.3f}"),
    ("attack_success", "{:>6.3f}"),
    ("acc_under_attack", "{:>6.3f}"),
    ("size_MB", "{:>7.1f}"),
    ("speedup", "{:>5.2f}x"),
)
HEADER = f"{'model':<16} {'acc':>6} {'L_l':>6} {'L_p':>6} {'ASR':>6} {'AuA':>6} {'MB':>7} {'speed':>6}"


def run_task(args: argparse.Namespace, world: Path, name: str, similarity: SentenceSimilarity) -> list[dict[str, Any]]:
    from grainvl.data.tokenization import packaged_minilm_path

    task = load_glue_task(world / "text" / "glue" / name)
    start = time.perf_counter()
    cfg = TextFinetuneConfig(steps=args.teacher_steps, batch_size=16, lr=1e-4, max_length=64, seed=args.seed)
    teacher = finetune_text_classifier(packaged_minilm_path(), task, cfg).model.eval()
    print(f"[{name}] teacher fine-tuned in {time.perf_counter() - start:.0f}s", flush=True)
    variants: dict[str, TextClassifier] = {"teacher": teacher, "int8": quantize_dynamic_int8(teacher)}
    notes: dict[str, Any] = {}
    steps = args.steps
    t0 = time.perf_counter()
    variants["prune"], notes["prune"] = prune_classifier(teacher, task, args.sparsity, steps, 1e-4, args.seed)
    variants["distill-3L"] = distill_classifier(teacher, task, [1, 3, 5], steps, 1e-4, args.seed)
    theseus_cfg = TheseusConfig(
        text_successors=3,
        scheduler="linear",
        replacing_rate=0.3,
        linear_k=0.7 / max(1, int(0.6 * steps)),  # p reaches 1 after 60% of the steps (README: b 0.3, k 6e-4)
        steps=steps,
        batch_size=16,
        lr=1e-4,
        seed=args.seed,
    )
    variants["theseus-3L"], _ = train_theseus_classifier(teacher, task, theseus_cfg)
    variants["distill-3L+int8"] = quantize_dynamic_int8(variants["distill-3L"])
    variants["theseus-3L+int8"] = quantize_dynamic_int8(variants["theseus-3L"])
    print(f"[{name}] compressed in {time.perf_counter() - t0:.0f}s; prune: {notes['prune']}", flush=True)
    teacher_probs = teacher.predict_proba(task.dev_texts[: args.dev])
    rows = []
    with torch.inference_mode():
        for label, model in variants.items():
            row = measure(label, model, teacher, teacher_probs, task, args.dev, args.attack, similarity, args.budget)
            rows.append({"task": name, **row})
            print(f"[{name}] " + " ".join(fmt.format(row[key]) for key, fmt in COLUMNS), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", type=Path, help="world folder with text/glue/ (default: generate a small one)")
    p.add_argument("--tasks", default="color_sst", help="comma-separated world GLUE tasks (e.g. color_sst,shape_sst)")
    p.add_argument("--teacher-steps", type=int, default=40, help="teacher fine-tuning steps (batch 16)")
    p.add_argument("--steps", type=int, default=40, help="training steps of each compression method (batch 16)")
    p.add_argument("--sparsity", type=float, default=0.5, help="pruning target sparsity of the tower's heads+FFN")
    p.add_argument("--dev", type=int, default=100, help="dev examples for accuracy and loyalty")
    p.add_argument("--attack", type=int, default=25, help="dev examples attacked")
    p.add_argument("--budget", type=float, default=0.2, help="attack budget: max share of words changed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="write all rows to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        world = args.world or make_world(Path(tmp) / "world", args.seed)
        similarity = SentenceSimilarity()
        rows = []
        for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            print(f"\n[{name}] {HEADER}", flush=True)
            rows += run_task(args, world, name, similarity)
    print(f"\ntotal {time.perf_counter() - start:.0f}s; L_l/L_p vs the teacher; ASR over originally-correct examples")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
