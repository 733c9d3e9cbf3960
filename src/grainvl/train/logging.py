"""Training metrics (``metrics.jsonl`` + TensorBoard + a progress bar); the results schema is in
:mod:`grainvl.bench.results`.

``metrics.jsonl`` gets one JSON object per :meth:`MetricsLogger.log` call; TensorBoard gets the same
numbers as scalars; the terminal gets a tqdm bar with a compact postfix. Only the process created
with ``enabled=True`` (rank 0) writes anything. A run resumed from step S first drops what the
interrupted run logged after S (``rewind_to``), so every step appears once.

``results.jsonl`` holds one object per evaluation with the long schema of DESIGN.md
(:data:`RESULT_FIELDS`); tables and plots are derived from it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from grainvl.utils.fileio import append_jsonl_line, atomic_write_text, to_plain


class MetricsLogger:
    """Writes ``run_dir/metrics.jsonl`` and TensorBoard events, and shows a progress bar; rank 0 only.

    ``total_steps``/``initial_step`` size the bar (``initial_step`` > 0 when resuming). Use
    :meth:`advance` every step (moves the bar) and :meth:`log` every ``log_every`` steps.
    ``rewind_to=S`` (a resume from step S) drops the metrics.jsonl lines of steps after S and makes
    TensorBoard discard events from step S + 1 on: the interrupted run logged them past its checkpoint
    and the resumed run logs those steps again.
    """

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        total_steps: int | None = None,
        initial_step: int = 0,
        rewind_to: int | None = None,
        tensorboard: bool = True,
        progress: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / "metrics.jsonl"
        self._writer: Any = None
        self._bar: Any = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if rewind_to is not None:
            drop_lines_after(self.path, rewind_to)
        if tensorboard:
            purge_step = rewind_to + 1 if rewind_to is not None else None
            self._writer = _summary_writer(self.run_dir / "tensorboard", purge_step)
        if progress:
            self._bar = tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True, file=sys.stderr)

    def advance(self, step: int) -> None:
        """Move the progress bar to ``step``."""
        if self._bar is not None and step > self._bar.n:
            self._bar.update(step - self._bar.n)

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Append ``{"step", "time", **values}`` to metrics.jsonl, mirror numbers to TensorBoard and the bar."""
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time(), **values}
        append_jsonl_line(self.path, record)
        scalars = {k: float(v) for k, v in to_plain(values).items() if isinstance(v, (int, float)) and v is not None}
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
        if self._bar is not None:
            self.advance(step)
            # Only the total and lr on the bar (a dozen loss terms would wrap the line); all go to metrics.jsonl.
            shown = {k: v for k, v in scalars.items() if k in ("loss", "lr")}
            self._bar.set_postfix({k.removesuffix("_loss"): f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drop_lines_after(path: Path, step: int) -> None:
    """Rewrite ``path`` (JSON lines) atomically without the records whose ``"step"`` is after ``step``.

    Lines without a step, or that are not JSON, are kept, except an unterminated last line that is not
    JSON: an append cut short by the crash that interrupted the run. A missing file is left alone.
    """
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    *lines, tail = text.split("\n")  # not splitlines(): U+2028 inside a JSON string is no line break
    kept = [line + "\n" for line in lines if not _after(line, step)]
    if tail and _is_json(tail) and not _after(tail, step):
        kept.append(tail + "\n")
    if "".join(kept) != text:
        atomic_write_text(path, "".join(kept))


def _after(line: str, step: int) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _summary_writer(log_dir: Path, purge_step: int | None = None) -> Any:
    """A TensorBoard SummaryWriter, or None (with one warning) when tensorboard cannot be imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep an installed TensorFlow quiet
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        warnings.warn(f"TensorBoard logging off: {error}", stacklevel=3)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
