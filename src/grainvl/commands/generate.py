"""``grainvl generate``: text-to-image with a pre-trained DaVinci (one prompt, a caption file, or the evaluation)."""

from __future__ import annotations

import argparse

from grainvl.commands import add_config_args, config_from_args, shortcut

CONFIG = "grainvl.recipes.generate:GenerateConfig"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="text-to-image with DaVinci: --prompt TEXT or --captions FILE, or --world W to evaluate",
        description="Generate images from text with a pre-trained DaVinci: top-k sampling restricted to image codes, "
        "--samples images per caption re-ranked by an ITC model's image-text cosine (--rerank-model), decoded by the "
        "image tokenizer. --prompt TEXT writes one PNG at --out; --captions FILE (one caption per line) writes --out/"
        "NNNN.png, grid.png and generations.jsonl; --world W evaluates on the world's test (ID) and test_ood (OOD) "
        "captions into the run folder --out: FID on EfficientNet-Lite0 features (not Inception), attribute accuracy "
        "by a probe trained on real images (and its ceiling on the real test images), caption R@1 by --judge-model, "
        "rows in results.jsonl and grid_id.png / grid_ood.png. See docs/davinci.md, 'Text-to-image'.",
    )
    add_config_args(p, CONFIG)
    shortcut(p, "--model", field="model", help="DaVinci run folder, model folder or preset")
    shortcut(p, "--tokenizer", field="tokenizer", help="the image tokenizer folder the model was trained with")
    shortcut(p, "--prompt", field="prompt", help="one caption to draw")
    shortcut(p, "--captions", field="captions", help="text file with one caption per line (the batch form)")
    shortcut(p, "--world", field="world", help="evaluate on this world's ID and OOD test captions")
    shortcut(p, "--out", field="out", help="PNG file (--prompt), folder (--captions) or run folder (--world)")
    shortcut(p, "--samples", field="samples", type=int, help="sampled images per caption (official 128)")
    shortcut(p, "--top-k", field="top_k", type=int, help="top-k sampling over image codes (capped at the codebook)")
    shortcut(p, "--temperature", field="temperature", type=float, help="sampling temperature")
    shortcut(p, "--rerank-model", field="rerank_model", help="ITC model (vision-language) that picks the best sample")
    shortcut(p, "--judge-model", field="judge_model", help="--world: independent ITC model for caption R@1")
    shortcut(p, "--limit", field="limit", type=int, help="--world: images per split (0 = all)")
    shortcut(p, "--seed", field="seed", type=int, help="sampling seed")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.generate import GenerateConfig, format_eval_report, run_generate, run_generation_eval
    from grainvl.recipes.scaffold import print_report

    cfg = config_from_args(GenerateConfig, args)
    if cfg.world:
        print_report(run_generation_eval(cfg), format_eval_report)
        return 0
    report = run_generate(cfg)
    reranked = "re-ranked" if report["reranked"] else "first sample kept"
    print(
        f"generated {report['prompts']} image(s) from {report['samples']} sample(s) each ({reranked}) in "
        f"{report['seconds']:.1f} s -> {report['files'][0] if report['prompts'] == 1 else cfg.out}"
    )
    return 0
