"""``grainvl pretrain-text``: BERT-style text-encoder pre-training with MLM or TACO (MLM + token alignment).

The recipe is TACO's (compression.md §E.2, ``run_mlm_with_contrastive.py``), scaled by the config:

* **Data** as Hugging Face ``run_mlm`` without ``--line_by_line``: every document is tokenised with
  ``[CLS] … [SEP]``, all of them are concatenated and cut into ``seq_len`` blocks (the remainder is
  dropped), so no batch holds padding — which TACO's samplers assume.
* **MLM**: 15% of each block's tokens predicted, 80% ``[MASK]`` / 10% random / 10% kept, through
  :class:`grainvl.data.masking.TextMaskingGenerator` (no n-gram spans, no whole-word expansion);
  only the masked positions go through the (tied) MLM head (:mod:`grainvl.losses.mlm`).
* **TACO** (``objective="taco"``): ``L = L_MLM + weight · L_TC`` with ``L_TC`` from
  :func:`grainvl.losses.taco.taco_loss` over every token (``taco.positions="all"``, the official
  default), τ = 0.07, K = 50 negatives, positives within ±2.
* **Optimisation**: AdamW lr 1e-4, weight decay 0.01, linear schedule with 1% warm-up (2.5k of 250k
  steps in the paper), through :func:`grainvl.train.loop.train` (DDP, accumulation, checkpoints,
  exact resume, energy accounting).

Models are BERT presets built from scratch (the ``"family": "text"`` architecture files of
:func:`grainvl.models.factory.list_models`, Turc et al. 2019's compact BERTs; ``bert-small`` is the
paper's small model), an architecture JSON file, or a local Hugging Face folder (continued
pre-training, e.g. the packaged MiniLM), all through :func:`grainvl.models.factory.resolve_model`.
The trained encoder is written as a Hugging Face ``BertForMaskedLM`` folder (:func:`save_hf_bert`)
that transformers' ``BertModel`` / ``BertForMaskedLM`` and :func:`grainvl.models.text.load_hf_bert`
both load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from grainvl.data.iterators import RepeatingLoader
from grainvl.data.text_corpus import load_corpora
from grainvl.models.factory import load_text_model
from grainvl.models.text import BertEncoderModel, MLMHead, save_hf_bert
from grainvl.recipes.scaffold import Run, format_cost, metric_rows, run_recipe, seed_model_init, summary_costs
from grainvl.tasks.pretrain_text import MaskingCollate, TacoSettings, TextPretrainTask, chunk_corpus
from grainvl.train.loop import TrainConfig, train
from grainvl.train.optim import OptimConfig, SchedConfig, build_optimizer, build_scheduler

OBJECTIVES = ("mlm", "taco")
TACO_POSITIONS = ("all", "masked", "unmasked")


# ---------------------------------------------------------------------------------------------- config
@dataclass
class TextPretrainData:
    corpus: tuple[str, ...] = ("builtin:english",)
    """Corpus specs (:func:`grainvl.data.text_corpus.load_corpus`): builtin:english, a world folder, .jsonl, .txt."""
    layout: str = "auto"
    """Plain-text files: ``lines`` (one document per line), ``blocks`` (blank-line separated) or ``auto``."""
    seq_len: int = 128
    batch_size: int = 32
    mask_prob: float = 0.15


@dataclass
class TextPretrainConfig:
    model: str = "bert-mini"
    """A text preset (``list_models("text")``), an architecture JSON file (TextConfig fields), or a HF folder."""
    tokenizer: str | None = None
    """Tokenizer folder; None: the model folder's, or the packaged MiniLM's (bert-base-uncased WordPiece)."""
    objective: str = "mlm"
    data: TextPretrainData = field(default_factory=TextPretrainData)
    taco: TacoSettings = field(default_factory=TacoSettings)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, lr_mult=1.0, betas=(0.9, 0.999)))
    sched: SchedConfig = field(default_factory=lambda: SchedConfig(kind="linear", warmup_steps=0.01))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/pretrain_text"))
    export_every: int = 0
    """> 0: also write the encoder as a Hugging Face folder every N steps under RUN/encoders/step_NNNNNNN."""
    torch_threads: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.taco.positions not in TACO_POSITIONS:
            raise ValueError(f"taco.positions must be one of {TACO_POSITIONS}, got {self.taco.positions!r}")
        if self.data.seq_len < 2 or self.data.batch_size < 2:
            raise ValueError("data.seq_len and data.batch_size must be >= 2 (TACO needs neighbours and other rows)")


# ---------------------------------------------------------------------------------------------- model
def build_text_model(model: str, tokenizer: str | None = None) -> tuple[BertEncoderModel, MLMHead, Any]:
    """-> (encoder, tied MLM head, tokenizer): :func:`grainvl.models.factory.load_text_model` of a text
    preset / architecture JSON (random init), a Hugging Face folder or a pretrain-text run (``RUN/encoder``)."""
    return load_text_model(model, tokenizer)


# ---------------------------------------------------------------------------------------------- run
def run_text_pretrain(cfg: TextPretrainConfig, resume: str | None = None) -> dict[str, Any]:
    """Build everything from ``cfg``, train, export the encoder on rank 0; returns the run report (rank 0)."""
    return run_recipe(cfg.train.run_dir, lambda run: _run(cfg, run, resume), cfg.torch_threads)


def _run(cfg: TextPretrainConfig, run: Run, resume: str | None) -> dict[str, Any]:
    env = run.env
    seed_model_init(cfg.train.seed)
    encoder, head, tokenizer = build_text_model(cfg.model, cfg.tokenizer)
    if cfg.data.seq_len > encoder.config.max_position_embeddings:
        raise ValueError(
            f"seq_len {cfg.data.seq_len} > max_position_embeddings {encoder.config.max_position_embeddings}"
        )
    documents = load_corpora(cfg.data.corpus, cfg.data.layout)  # type: ignore[arg-type]
    blocks = chunk_corpus(documents, tokenizer, cfg.data.seq_len)
    collate = MaskingCollate(tokenizer, cfg.data.seq_len, cfg.data.mask_prob)
    loader = RepeatingLoader(blocks, cfg.data.batch_size, collate, cfg.train.seed, env.rank, env.world_size)
    task = TextPretrainTask(encoder, head, cfg.objective, cfg.taco)
    optimizer = build_optimizer(task, cfg.optim)
    scheduler = build_scheduler(optimizer, dataclasses.replace(cfg.sched, total_steps=cfg.train.steps))
    run.write_config(cfg)

    def on_step(step: int, losses: dict[str, float], metrics: dict[str, float]) -> None:
        if run.is_main and cfg.export_every and step % cfg.export_every == 0:
            save_hf_bert(run.dir / "encoders" / f"step_{step:07d}", encoder, head, tokenizer)

    summary = train(task, loader, optimizer, scheduler, cfg.train, env, on_step=on_step, resume=resume)
    if not run.is_main:
        return {}
    model_dir = save_hf_bert(run.dir / "encoder", encoder, head, tokenizer)
    corpus = {"documents": len(documents), "blocks": len(blocks), "tokens": len(blocks) * cfg.data.seq_len}
    report = {"summary": summary.to_dict(), "corpus": corpus, "model_dir": str(model_dir), "objective": cfg.objective}
    losses = {f"train/{name}": value for name, value in summary.final_losses.items()}
    task, dataset = f"pretrain_text_{cfg.objective}", "+".join(cfg.data.corpus)
    run.append(
        metric_rows(
            losses,
            model=cfg.model,
            task=task,
            dataset=dataset,
            split="id",
            costs=summary_costs(summary, cfg.train.seed),
        )
    )
    run.write_summary(report)
    return report


def format_report(report: dict[str, Any]) -> str:
    s, c = report["summary"], report["corpus"]
    losses = ", ".join(f"{k} {v:.4f}" for k, v in s["final_losses"].items())
    return "\n".join(
        [
            f"objective {report['objective']}: {s['steps']} steps on {c['blocks']} blocks "
            f"({c['tokens']} tokens from {c['documents']} documents)",
            f"final losses: {losses}",
            format_cost(s),
            f"encoder saved to {report['model_dir']} (Hugging Face BertForMaskedLM folder)",
        ]
    )
