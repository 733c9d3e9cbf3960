"""Tables and plots derived from a benchmark's ``results.jsonl`` (the long schema of DESIGN.md).

``write_report(results, out)`` writes, next to each other:

* ``results.csv``: every row of results.jsonl, every key (schema columns first, then the rest
  sorted), so columns added later (loyalty, robustness, ...) pass through untouched;
* ``leaderboard.csv``: one row per (model, task): the task's primary metric on ID and OOD, their
  gap ``diff = OOD - ID``, Pareto membership and every efficiency column, plus unknown extra keys;
* ``report.md``: the per-model leaderboard (averages over tasks), the per-task table, failed runs
  with their reason, the Pareto frontiers, the hardware/software tags and how energy was obtained;
* ``pareto.png`` (score vs. latency per task and on the average, frontier drawn) and
  ``id_vs_ood.png`` (OOD against ID score per task, with the no-gap diagonal);
* when rows carry ``lang`` (cross-lingual tasks, ``tasks.iglue``): a per-language table in report.md (each
  language, then IGLUE's average without English) and ``languages.png``, a language × task heat map of each
  task's primary metric per model. The task score of such a task is its row without ``lang``.

Rows of one (model, task) share their efficiency columns; ``energy_kWh``/``co2_g`` of a row are the
energy of evaluating that split, so the tables add the ID and OOD rows. A row with
``status == "failed"`` carries ``error`` (the reason) and no metric.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from grainvl.bench.pareto import Point, average_points, frontier, pareto_optimal
from grainvl.bench.results import RESULT_FIELDS, metric_language
from grainvl.errors import DataError
from grainvl.metrics.captioning import percent_points
from grainvl.utils.fileio import atomic_write_bytes, atomic_write_text

SPLITS = ("id", "ood")
EFFICIENCY_COLUMNS = (
    "params_M",
    "gflops",
    "latency_ms",
    "latency_p90_ms",
    "throughput",
    "peak_mem_MB",
    "energy_kWh",
    "co2_g",
)
"""Efficiency columns of the tables: latency p50/p90 (ms, batch 1), throughput (samples/s, at the rows'
``throughput_batch``)."""
SIDE_METRICS = ("label_loyalty", "probability_loyalty", "acc_before_attack", "acc_under_attack", "attack_success_rate")
"""Per-task ID columns added when present (``grainvl bench --teacher``): loyalty to the teacher in [0, 1],
robustness under the word-substitution attack in %."""
BENCH_EXTRA_FIELDS = (
    "status",
    "error",
    "primary",
    "latency_p90_ms",
    "latency_repeats",
    "throughput_batch",
    "peak_mem_method",
    "precision",
    "device",
    "torch_threads",
    "energy_method",
    "country",
    "eval_wall_s",
    "finetune_steps",
    "finetune_wall_s",
    "finetune_energy_kWh",
    "finetune_co2_g",
    "run_dir",
    "model_source",
    "commit_dirty",
)
"""Keys the benchmark adds to the schema; any other key is an extra column passed through as is."""
ESTIMATE_NOTE = (
    "Energy is codecarbon's offline tracker (bundled per-country carbon intensity, no network). It *measures* "
    "CPU energy only where RAPL power counters are readable and GPU energy through NVML; on machines without "
    "them (most VMs and containers) the CPU figure is an **estimate**: the CPU's TDP (looked up from its model "
    "name, or a default per thread) scaled by the measured load as TDP x (0.1 + 0.9 x load^3), and RAM energy "
    "is always a power model from the installed RAM. When codecarbon itself is unavailable the numbers are "
    "grainvl's fallback estimate (4 W per busy CPU thread + 10 W RAM). CO2-eq = energy x the country's carbon "
    "intensity. The exact method of each run is listed below."
)


# ---------------------------------------------------------------------------------------------- reading
def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results.jsonl file (blank lines skipped; a bad line is a :class:`DataError`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(path, f"line {number}", f"not JSON: {error.msg}") from None
        if not isinstance(row, dict) or not row.get("model") or not row.get("task"):
            raise DataError(path, f"line {number}", "a result needs at least 'model' and 'task'")
        rows.append(row)
    return rows


def _failed(row: dict[str, Any]) -> bool:
    return row.get("status") == "failed"


def primary_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """``{task: metric}``: the metric flagged ``primary`` in the rows (``grainvl bench`` flags each task's
    registered primary metric), else the first one seen for the task."""
    chosen: dict[str, str] = {}
    first: dict[str, str] = {}
    for row in rows:
        if _failed(row) or row.get("metric") is None:
            continue
        first.setdefault(row["task"], row["metric"])
        if row.get("primary"):
            chosen.setdefault(row["task"], row["metric"])
    for task, metric in first.items():
        if task not in chosen:
            chosen[task] = metric
    return chosen


def _extra_keys(rows: Iterable[dict[str, Any]]) -> list[str]:
    known = set(RESULT_FIELDS) | set(BENCH_EXTRA_FIELDS)
    return sorted({key for row in rows for key in row if key not in known})


# ---------------------------------------------------------------------------------------------- the wide table
def _value(rows: Sequence[dict[str, Any]], metric: str, split: str) -> float | None:
    """The task score: rows with a ``lang`` (one test language of a cross-lingual task) are not it."""
    for row in rows:
        if row.get("lang"):
            continue
        if row.get("metric") == metric and row.get("split") == split and row.get("value") is not None:
            return float(row["value"])
    return None


def _sum_over_splits(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    """Sum of ``key`` over one row per split (rows of one split share the energy of that evaluation)."""
    per_split = {row.get("split"): row.get(key) for row in rows if row.get(key) is not None}
    return sum(float(v) for v in per_split.values()) if per_split else None


def task_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per (model, task) in first-seen order: primary metric ID/OOD/diff, cost, status, extras."""
    primary = primary_metrics(rows)
    extras = _extra_keys(rows)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["task"]), []).append(row)
    table = []
    for (model, task), group in groups.items():
        ok = [r for r in group if not _failed(r)]
        metric = primary.get(task)
        entry: dict[str, Any] = {"model": model, "task": task, "metric": metric}
        entry["id"] = _value(ok, metric, "id") if metric else None
        entry["ood"] = _value(ok, metric, "ood") if metric else None
        entry["diff"] = entry["ood"] - entry["id"] if entry["id"] is not None and entry["ood"] is not None else None
        for split in SPLITS:  # the score averaged across tasks: one percent scale (captioning fractions x100)
            value = entry[split]
            entry[f"{split}_points"] = percent_points(metric, value) if metric and value is not None else None
        source = ok[0] if ok else group[0]
        for column in EFFICIENCY_COLUMNS:
            entry[column] = source.get(column)
        entry["energy_kWh"] = _sum_over_splits(ok, "energy_kWh")
        entry["co2_g"] = _sum_over_splits(ok, "co2_g")
        failures = [r for r in group if _failed(r)]
        entry["status"] = "failed" if failures and not ok else "ok"
        entry["error"] = "; ".join(str(r.get("error") or "unknown") for r in failures) or None
        for key in extras:
            entry[key] = next((r[key] for r in group if r.get(key) is not None), None)
        for metric in present_side_metrics(rows):  # loyalty / robustness on ID (grainvl bench --teacher)
            entry[metric] = _value(ok, metric, "id")
        table.append(entry)
    _mark_pareto(table)
    return table


def present_side_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The loyalty and robustness metrics that some row carries, in a fixed order."""
    seen = {row.get("metric") for row in rows}
    return [m for m in SIDE_METRICS if m in seen]


def _mark_pareto(table: list[dict[str, Any]]) -> None:
    """Add ``pareto_id``/``pareto_ood``: on that task's frontier of the split's score vs. p50 latency."""
    for split in SPLITS:
        for task in dict.fromkeys(e["task"] for e in table):
            entries = [e for e in table if e["task"] == task]
            optimal = pareto_optimal(Point(e["model"], e["latency_ms"], e[split]) for e in entries)
            for e in entries:
                e[f"pareto_{split}"] = optimal[e["model"]]


def task_points(table: Sequence[dict[str, Any]], split: str) -> dict[str, list[Point]]:
    """``{task: [Point(model, p50 latency, primary score on split in percent points)]}``."""
    points: dict[str, list[Point]] = {}
    for e in table:
        points.setdefault(e["task"], []).append(Point(e["model"], e["latency_ms"], e[f"{split}_points"]))
    return points


def model_table(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per model: averages over tasks (score, latency, FLOPs, params), max memory, summed energy."""
    averages = {split: {p.name: p for p in average_points(task_points(table, split))} for split in SPLITS}
    optimal = {split: pareto_optimal(averages[split].values()) for split in SPLITS}
    rows = []
    for model in dict.fromkeys(e["model"] for e in table):
        mine = [e for e in table if e["model"] == model]
        entry: dict[str, Any] = {"model": model, "tasks_ok": sum(e["status"] == "ok" for e in mine), "tasks": len(mine)}
        for split in SPLITS:
            entry[f"avg_{split}"] = averages[split][model].score
        entry["avg_diff"] = _difference(entry["avg_ood"], entry["avg_id"])
        entry["latency_ms"] = averages["id"][model].latency or averages["ood"][model].latency
        for column in ("params_M", "gflops", "latency_p90_ms", "throughput"):
            entry[column] = _mean(e[column] for e in mine)
        entry["peak_mem_MB"] = max((e["peak_mem_MB"] for e in mine if e["peak_mem_MB"] is not None), default=None)
        for column in ("energy_kWh", "co2_g"):
            values = [e[column] for e in mine if e[column] is not None]
            entry[column] = sum(values) if values else None
        for split in SPLITS:
            entry[f"pareto_{split}"] = optimal[split][model]
        rows.append(entry)
    return rows


def _difference(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


# ---------------------------------------------------------------------------------------------- text output
def format_value(value: Any) -> str:
    """Compact text for a table cell: ✓ for True, blank for None/False, 3-4 significant digits for floats."""
    if value is None or value is False:
        return ""
    if value is True:
        return "✓"
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        magnitude = abs(value)
        if magnitude == 0:
            return "0"
        if 1 <= magnitude < 100:
            return f"{value:.2f}"
        if 100 <= magnitude < 1e5:
            return f"{value:.1f}"
        return f"{value:.3g}"  # small (energy in kWh, GFLOPs of tiny models) or huge: 3 significant digits
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buffer.getvalue()


def long_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Schema columns in schema order, then every other key present (bench extras and unknown extras) sorted."""
    others = sorted({key for row in rows for key in row} - set(RESULT_FIELDS))
    return [*RESULT_FIELDS, *others]


# The cost columns shared by the per-task and the per-model tables (key, header).
COST_COLUMNS = (
    ("params_M", "params (M)"),
    ("gflops", "GFLOPs/sample"),
    ("latency_ms", "latency p50 (ms)"),
    ("latency_p90_ms", "latency p90 (ms)"),
    ("throughput", "throughput (samples/s)"),
    ("peak_mem_MB", "peak mem (MiB)"),
    ("energy_kWh", "eval energy (kWh)"),
    ("co2_g", "eval CO2 (g)"),
)
TASK_COLUMNS = (
    ("model", "model"),
    ("task", "task"),
    ("metric", "metric"),
    ("id", "ID"),
    ("ood", "OOD"),
    ("diff", "diff (OOD-ID)"),
    ("pareto_id", "Pareto ID"),
    ("pareto_ood", "Pareto OOD"),
    *COST_COLUMNS,
    ("status", "status"),
)
MODEL_COLUMNS = (
    ("model", "model"),
    ("tasks_ok", "tasks ok"),
    ("avg_id", "avg ID"),
    ("avg_ood", "avg OOD"),
    ("avg_diff", "avg diff"),
    ("pareto_id", "Pareto ID"),
    ("pareto_ood", "Pareto OOD"),
    *COST_COLUMNS,
)


def _tags(rows: Sequence[dict[str, Any]], key: str) -> list[str]:
    return sorted({str(r[key]) for r in rows if r.get(key) is not None})


def _frontier_lines(table: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for split in SPLITS:
        per_task = task_points(table, split)
        for task, points in [*per_task.items(), ("average", average_points(per_task))]:
            names = [p.name for p in frontier(points)]
            lines.append(f"- {task}, {split.upper()}: " + (", ".join(names) if names else "(no valid results)"))
    return lines


def markdown_report(rows: Sequence[dict[str, Any]], figures: Sequence[str] = ()) -> str:
    """The whole Markdown report of a benchmark's rows."""
    table = task_table(rows)
    models = model_table(table)
    extras = _extra_keys(rows)
    side = present_side_metrics(rows)
    task_keys = [k for k, _ in TASK_COLUMNS] + side + extras
    task_headers = [h for _, h in TASK_COLUMNS] + side + extras
    batches = sorted({int(r["throughput_batch"]) for r in rows if r.get("throughput_batch") is not None})
    throughput_at = f"batch {' / '.join(map(str, batches))}" if batches else "a batch size that was not recorded"
    parts = [
        "# Benchmark report",
        "",
        "Scores are each task's primary metric (higher is better) on the in-distribution test split (ID) and "
        "the out-of-distribution split (OOD); diff = OOD - ID. Latency is the wall-clock time of one inference "
        "at batch 1 after warm-up (VLUE's protocol), p50 and p90; throughput is at "
        f"{throughput_at} (--throughput-batch); GFLOPs are forward FLOPs per sample counted by "
        "torch.utils.flop_counter; energy and CO2 are those of the ID + OOD evaluations. A model is Pareto-optimal "
        "when no other model is at least as fast and at least as good and strictly one of them (p50 latency vs. "
        "score; identical models are both optimal).",
        "",
        "## Leaderboard (averages over tasks)",
        "",
        markdown_table([h for _, h in MODEL_COLUMNS], models, [k for k, _ in MODEL_COLUMNS]),
        "",
        "## Per task",
        "",
        markdown_table(task_headers, table, task_keys),
        "",
        "## Pareto frontiers (fastest first)",
        "",
        *_frontier_lines(table),
    ]
    if side:
        teachers = ", ".join(_tags(rows, "teacher")) or "none"
        parts += [
            "",
            "## Loyalty and robustness (ID)",
            "",
            f"Loyalty to the teacher ({teachers}) on the first ID examples of each task: label loyalty = share of "
            "examples where the model's arg-max equals the teacher's, probability loyalty = 1 - sqrt(JSD) (base 2), "
            "both in [0, 1] (the teacher itself scores 1). Robustness: a TextFooler-style word-substitution attack "
            "on the text side (NLVR2 sentence, VQA question, retrieval caption) of the first examples: accuracy "
            "before and under attack and the attack success rate (successes / originally correct), in %.",
            "",
            markdown_table(["model", "task", *side], table, ["model", "task", *side]),
        ]
    failed = [e for e in table if e["error"]]
    if failed:
        parts += [
            "",
            "## Failed runs",
            "",
            markdown_table(["model", "task", "reason"], failed, ["model", "task", "error"]),
        ]
    parts += ["", "## Environment and energy", "", ESTIMATE_NOTE, ""]
    for key, label in (("hardware", "hardware"), ("precision", "precision"), ("torch", "torch"), ("commit", "commit")):
        parts.append(f"- {label}: {', '.join(_tags(rows, key)) or 'not recorded'}")
    if any(r.get("commit_dirty") for r in rows):
        parts.append("- the working tree had uncommitted changes when measured (commit_dirty)")
    parts.append(f"- seeds: {', '.join(_tags(rows, 'seed')) or 'not recorded'}")
    parts.append("- energy method(s):")
    parts += [f"  - {method}" for method in _tags(rows, "energy_method")] or ["  - not recorded"]
    parts += _language_section(rows)
    if figures:
        parts += ["", "## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- languages
ENGLISH = "en"
AVERAGE = "avg (no en)"
LANGUAGE_METRICS = ("acc", "r_mean", "txt_r1", "img_r1")
"""Metrics shown per language in the report: accuracy (XVNLI, xGQA, MaRVL), mean recall and TR / IR R@1 (retrieval)."""


def _language_order(langs: Iterable[str]) -> list[str]:
    return sorted(set(langs), key=lambda lang: (lang != ENGLISH, lang))


def cross_lingual_mean(values: dict[str, float]) -> float | None:
    """IGLUE's average: the mean over the non-English languages (English alone: its own score)."""
    kept = [v for lang, v in values.items() if lang != ENGLISH] or list(values.values())
    return sum(kept) / len(kept) if kept else None


def language_table(metrics: dict[str, float], indent: str = "") -> str:
    """Plain-text table of ``metric@lang`` values: one line per metric, one column per language, then the
    non-English average (the finetune report)."""
    grid: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        metric, lang = metric_language(key)
        if lang is not None:
            grid.setdefault(metric, {})[lang] = value
    langs = _language_order(lang for values in grid.values() for lang in values)
    width = max([6, *(len(m) for m in grid)])
    lines = [indent + f"{'metric':<{width}} " + " ".join(f"{lang:>7}" for lang in langs) + f" {AVERAGE:>12}"]
    for metric, values in grid.items():
        cells = " ".join(f"{values[lang]:7.2f}" if lang in values else f"{'':>7}" for lang in langs)
        average = cross_lingual_mean(values)
        lines.append(indent + f"{metric:<{width}} {cells} " + (f"{average:12.2f}" if average is not None else ""))
    return "\n".join(lines)


def language_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per (model, task, metric) of the rows that carry ``lang``: ``{lang: value}`` plus ``avg``.

    Only the task's primary metric and :data:`LANGUAGE_METRICS`, on the ID split; rows without ``lang`` are
    ignored (they are task scores)."""
    primary = primary_metrics([r for r in rows if not r.get("lang")] or rows)
    grid: dict[tuple[str, str, str], dict[str, float]] = {}
    for row in rows:
        lang, metric = row.get("lang"), row.get("metric")
        if not lang or _failed(row) or row.get("value") is None or row.get("split") not in (None, "id"):
            continue
        if metric == primary.get(row["task"]) or metric in LANGUAGE_METRICS:
            grid.setdefault((row["model"], row["task"], str(metric)), {})[str(lang)] = float(row["value"])
    return [
        {"model": m, "task": t, "metric": metric, **values, "avg": cross_lingual_mean(values)}
        for (m, t, metric), values in grid.items()
    ]


def languages_of(table: Sequence[dict[str, Any]]) -> list[str]:
    fixed = {"model", "task", "metric", "avg"}
    return _language_order(k for row in table for k in row if k not in fixed)


def plot_language_heatmap(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Language × task heat map of each task's primary metric, one panel per model (percent, annotated)."""
    table = language_rows(rows)
    primary = primary_metrics([r for r in rows if not r.get("lang")] or rows)
    table = [e for e in table if e["metric"] == primary.get(e["task"])]
    langs, models = languages_of(table), list(dict.fromkeys(e["model"] for e in table))
    tasks = list(dict.fromkeys(e["task"] for e in table))
    fig, axes = _plot_grid(max(1, len(models)))
    for ax, model in zip(axes, models):
        cells = {e["task"]: e for e in table if e["model"] == model}
        grid = [[cells.get(t, {}).get(lang, math.nan) for t in tasks] for lang in langs]  # (languages, tasks)
        image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=100)
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if math.isfinite(value):
                    ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(langs)), langs, fontsize=8)
        ax.set_title(model, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    path = Path(path)
    _save_figure(fig, path)
    return path


def _language_section(rows: Sequence[dict[str, Any]]) -> list[str]:
    table = language_rows(rows)
    if not table:
        return []
    langs = languages_of(table)
    return [
        "",
        "## Per language (cross-lingual tasks)",
        "",
        "Each test language's score after fine-tuning on English (zero-shot transfer unless the model's label "
        "says few-shot or translate-test); the last column is IGLUE's average, which excludes English. Retrieval: "
        "r_mean = mean of TR and IR R@1/5/10, txt_r1 / img_r1 = TR / IR R@1.",
        "",
        markdown_table(["model", "task", "metric", *langs, AVERAGE], table, ["model", "task", "metric", *langs, "avg"]),
    ]


# ---------------------------------------------------------------------------------------------- plots
def _plot_grid(n: int) -> tuple[Any, list[Any]]:
    # Imported here: matplotlib is heavy and only plotting needs it.
    import matplotlib

    matplotlib.use("Agg")
    # Imported here: matplotlib is heavy and only plotting needs it.
    import matplotlib.pyplot as plt

    columns = min(3, max(1, n))
    rows = math.ceil(max(1, n) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.8 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save_figure(fig: Any, path: Path) -> None:
    # Imported here: matplotlib is heavy and only plotting needs it.
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_pareto(table: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Score vs. p50 latency per task and on the average; ID hollow, OOD filled, each split's frontier drawn."""
    panels: dict[str, dict[str, list[Point]]] = {}
    for split in SPLITS:
        per_task = task_points(table, split)
        for task, points in [*per_task.items(), ("average", average_points(per_task))]:
            panels.setdefault(task, {})[split] = points
    fig, axes = _plot_grid(len(panels))
    style = {"id": {"color": "tab:blue", "fill": "none"}, "ood": {"color": "tab:orange", "fill": "tab:orange"}}
    for ax, (task, by_split) in zip(axes, panels.items()):
        for split, points in by_split.items():
            valid = [p for p in points if p.valid]
            color = style[split]["color"]
            ax.scatter(
                [p.latency for p in valid],
                [p.score for p in valid],
                edgecolors=color,
                facecolors=style[split]["fill"],
                label=split.upper(),
                zorder=3,
            )
            for p in valid:
                ax.annotate(p.name, (p.latency, p.score), fontsize=7, xytext=(3, 3), textcoords="offset points")
            front = frontier(valid)
            if front:
                ax.step([p.latency for p in front], [p.score for p in front], where="post", color=color, alpha=0.7)
        ax.set_title(task)
        ax.set_xlabel("latency p50, batch 1 (ms)")
        ax.set_ylabel("score")
        _finish_axes(ax)
    path = Path(path)
    _save_figure(fig, path)
    return path


def _finish_axes(ax: Any) -> None:
    """Grid, and a legend unless nothing was drawn (a task where every model failed has nothing to label)."""
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def plot_id_vs_ood(table: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """OOD score against ID score per task (one colour per model, shared legend); under the diagonal = OOD drop."""
    # Imported here: matplotlib is heavy and only plotting needs it.
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(e["task"] for e in table))
    models = list(dict.fromkeys(e["model"] for e in table))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    fig, axes = _plot_grid(len(tasks))
    for ax, task in zip(axes, tasks):
        entries = [e for e in table if e["task"] == task and e["id"] is not None and e["ood"] is not None]
        for e in entries:
            ax.scatter([e["id"]], [e["ood"]], color=colors[e["model"]], label=e["model"], zorder=3)
        values = [v for e in entries for v in (e["id"], e["ood"])]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        pad = 0.05 * (high - low or 1.0)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", linestyle="--", linewidth=1)
        metric = next((e["metric"] for e in table if e["task"] == task and e["metric"]), "score")
        ax.set_title(task)
        ax.set_xlabel(f"ID {metric}")
        ax.set_ylabel(f"OOD {metric}")
        _finish_axes(ax)
    path = Path(path)
    _save_figure(fig, path)
    return path


# ---------------------------------------------------------------------------------------------- all of it
def write_report(results: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write results.csv, leaderboard.csv, report.md, pareto.png and id_vs_ood.png; return their paths."""
    results = Path(results)
    out = Path(out_dir) if out_dir is not None else results.parent
    out.mkdir(parents=True, exist_ok=True)
    rows = read_results(results)
    if not rows:
        raise DataError(results, "file", "no results to report")
    table = task_table(rows)
    paths = {
        "results_csv": out / "results.csv",
        "leaderboard_csv": out / "leaderboard.csv",
        "pareto_png": plot_pareto(table, out / "pareto.png"),
        "id_vs_ood_png": plot_id_vs_ood(table, out / "id_vs_ood.png"),
        "report_md": out / "report.md",
    }
    atomic_write_text(paths["results_csv"], csv_text(rows, long_columns(rows)))
    wide_columns = [k for k, _ in TASK_COLUMNS] + present_side_metrics(rows) + ["error"] + _extra_keys(rows)
    atomic_write_text(paths["leaderboard_csv"], csv_text(table, wide_columns))
    figures = [str(paths["pareto_png"]), str(paths["id_vs_ood_png"])]
    if language_rows(rows):  # cross-lingual tasks: the language x task heat map
        paths["languages_png"] = plot_language_heatmap(rows, out / "languages.png")
        figures.append(str(paths["languages_png"]))
    atomic_write_text(paths["report_md"], markdown_report(rows, figures))
    return paths
