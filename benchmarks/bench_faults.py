"""Fault injection: corrupt a tiny world, its outputs and its checkpoints, run the real commands, count outcomes.

Every fault is applied to a fresh copy of one world (``grainvl world --images 60 --videos 4 --seed 1``) and
then the command that consumes it runs as a user would run it: a subprocess of ``python -m grainvl``. Each
outcome lands in exactly one bucket:

- ``one-line``: the expected outcome: exit status 2 and one ``error:`` line on stderr that names the file
  (``data check`` lists every bad record, one line each), or, for a fault that must be survived, exit 0 and
  the one line that says what was done about it;
- ``traceback``: a Python traceback reached the user;
- ``silent``: exit 0 although the fault should have been reported (the worst: a wrong result);
- ``unclear``: non-zero exit without a traceback, but the message does not name the file or is not one line;
- ``n/a``: the fault cannot be made here (permission faults when running as root, who ignores permissions).

The last lines print the counts; the script exits non-zero when any traceback or silent pass remains.
``tests/test_faults_*.py`` test each class in-process in seconds; this script is the end-to-end census.

    python benchmarks/bench_faults.py            # all faults (~3–5 minutes on 2 cores)
    python benchmarks/bench_faults.py -k vqa     # only faults whose name contains "vqa"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PYTHON = sys.executable
TINY_PRETRAIN = ["--steps", "2", "--set", "train.ckpt_every=1"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str


@dataclass
class Fault:
    """One corruption and the command that must notice it.

    ``apply(world, work)`` corrupts the copy ``world`` (and may prepare folders in ``work``) and returns the
    command line (arguments after ``grainvl``). ``names`` must appear in the one error line (a file name or a
    path fragment). ``survive`` marks faults that must be survived: exit 0 and ``names`` in the output.
    ``check(world, work)`` is an extra invariant after the run (e.g. nothing deleted); it returns a reason
    when it fails.
    """

    name: str
    klass: str
    apply: Callable[[Path, Path], list[str]]
    names: str
    survive: bool = False
    needs_non_root: bool = False
    check: Callable[[Path, Path], str | None] | None = None
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- helpers
def grainvl(args: list[str], cwd: Path, timeout: float = 600) -> Outcome:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONWARNINGS": "ignore"}
    env.pop("GRAINVL_DEBUG", None)
    done = subprocess.run(
        [PYTHON, "-m", "grainvl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def drop_manifest(world: Path) -> None:
    """The issue's harder case: faults ``data check`` must find without the sha256 manifest."""
    (world / "manifest.json").unlink(missing_ok=True)


def pretrain(world: Path, work: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(world), "--out", str(work / "run"), *TINY_PRETRAIN, *extra]


def check(world: Path, *extra: str) -> list[str]:
    return ["data", "check", str(world), *extra]


def finetune(task: str, world: Path, work: Path, *extra: str) -> list[str]:
    return ["finetune", task, "--world", str(world), "--out", str(work / "ft"), "--steps", "1", *extra]


IMAGE_TEXT = Path("annotations/pretrain/train/image_text.jsonl")
REGION = Path("annotations/pretrain/train/region.jsonl")
VQA_TEST = Path("annotations/vqa/vqa_test.json")
GROUNDING_TEST = Path("annotations/refcoco+/refcoco+_test.json")


# ---------------------------------------------------------------------------------------- data faults
def stream_is_directory(world: Path, work: Path) -> list[str]:
    (world / IMAGE_TEXT).unlink()
    (world / IMAGE_TEXT).mkdir()
    return pretrain(world, work)


def stream_self_symlink(world: Path, work: Path) -> list[str]:
    (world / IMAGE_TEXT).unlink()
    (world / IMAGE_TEXT).symlink_to(IMAGE_TEXT.name)
    return pretrain(world, work)


def region_deleted(world: Path, work: Path) -> list[str]:
    (world / REGION).unlink()
    return pretrain(world, work)


def region_deleted_check(world: Path, work: Path) -> list[str]:
    """With the manifest: it lists the stream. (Without one a folder without regions is a valid dataset.)"""
    (world / REGION).unlink()
    return check(world)


def stream_dir_check(world: Path, work: Path) -> list[str]:
    (world / IMAGE_TEXT).unlink()
    (world / IMAGE_TEXT).mkdir()
    drop_manifest(world)
    return check(world)


def vqa_duplicate_question(world: Path, work: Path) -> list[str]:
    path = world / VQA_TEST
    rows = json.loads(path.read_text())
    rows[3] = {**rows[3], "question_id": rows[2]["question_id"]}
    path.write_text(json.dumps(rows))
    return finetune("vqa", world, work)


def vqa_duplicate_question_check(world: Path, work: Path) -> list[str]:
    vqa_duplicate_question(world, work)
    drop_manifest(world)
    return check(world)


def shrink_first_grounding_image(world: Path) -> str:
    """Overwrite the image of the first grounding test record with a 100x80 one; returns its file name."""
    from PIL import Image

    first = json.loads((world / GROUNDING_TEST).read_text())[0]["image"]
    Image.new("RGB", (100, 80), "white").save(world / first)
    return Path(first).name


def image_size_mismatch(world: Path, work: Path) -> list[str]:
    shrink_first_grounding_image(world)
    return finetune("grounding", world, work)


def image_size_mismatch_check(world: Path, work: Path) -> list[str]:
    shrink_first_grounding_image(world)
    drop_manifest(world)
    return check(world)


def nan_box(world: Path, work: Path) -> list[str]:
    rows = read_jsonl(world / REGION)
    row = rows[0]
    for element in row.get("elems", []):
        element["bb"] = [float("nan"), 1.0, 2.0, 3.0]
    write_jsonl(world / REGION, rows)
    drop_manifest(world)
    return check(world)


def caption_cleans_to_empty(world: Path, work: Path) -> list[str]:
    rows = read_jsonl(world / IMAGE_TEXT)
    rows[1]["caption"] = ["  ... !!! "]
    write_jsonl(world / IMAGE_TEXT, rows)
    drop_manifest(world)
    return check(world)


def empty_caption_list(world: Path, work: Path) -> list[str]:
    rows = read_jsonl(world / IMAGE_TEXT)
    rows[1]["caption"] = []
    write_jsonl(world / IMAGE_TEXT, rows)
    drop_manifest(world)
    return check(world)


def latin1_byte(world: Path, work: Path) -> list[str]:
    data = (world / IMAGE_TEXT).read_bytes().replace(b"yellow", b"yell\xe9w", 1)
    (world / IMAGE_TEXT).write_bytes(data)
    return pretrain(world, work)


def latin1_byte_skip(world: Path, work: Path) -> list[str]:
    return [*latin1_byte(world, work), "--skip-bad"]


def utf16_file(world: Path, work: Path) -> list[str]:
    text = (world / IMAGE_TEXT).read_text()
    (world / IMAGE_TEXT).write_bytes(text.encode("utf-16"))
    drop_manifest(world)
    return check(world)


def unreadable_file(world: Path, work: Path) -> list[str]:
    (world / IMAGE_TEXT).chmod(0)
    return check(world)


def absolute_image_path(world: Path, work: Path) -> list[str]:
    rows = read_jsonl(world / IMAGE_TEXT)
    rows[0]["image"] = "/etc/hostname"
    write_jsonl(world / IMAGE_TEXT, rows)
    return pretrain(world, work)


def escaping_image_path(world: Path, work: Path) -> list[str]:
    rows = read_jsonl(world / IMAGE_TEXT)
    rows[0]["image"] = "../../../../../../etc/hostname"
    write_jsonl(world / IMAGE_TEXT, rows)
    return pretrain(world, work)


# -------------------------------------------------------------------------------------- output faults
def out_is_file(world: Path, work: Path) -> list[str]:
    (work / "run").write_text("not a folder")
    return pretrain(world, work)


def out_read_only(world: Path, work: Path) -> list[str]:
    (work / "run").mkdir()
    (work / "run").chmod(0o500)
    return pretrain(world, work)


def metrics_is_directory(world: Path, work: Path) -> list[str]:
    (work / "run" / "metrics.jsonl").mkdir(parents=True)
    return pretrain(world, work)


def results_is_directory(world: Path, work: Path) -> list[str]:
    (work / "run" / "results.jsonl").mkdir(parents=True)
    return pretrain(world, work)


def run_locked(world: Path, work: Path) -> list[str]:
    """A live process (this script) holds the run folder's lock."""
    (work / "run").mkdir()
    (work / "run" / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    return pretrain(world, work)


def convert_into_precious(world: Path, work: Path) -> list[str]:
    precious = work / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    official = work / "official.th"
    exported = grainvl(["convert", "--to", "official-x2vlm", "--input", str(work / "source_run" / "model"),
                        "--output", str(official)], cwd=work)  # fmt: skip
    if exported.rc != 0:
        raise RuntimeError(f"could not export the source model: {exported.stderr}")
    return ["convert", "--from", "official-x2vlm", "--input", str(official), "--output", str(precious)]


def precious_intact(world: Path, work: Path) -> str | None:
    thesis = work / "precious" / "thesis.tex"
    return None if thesis.is_file() and thesis.read_text() == "years of work" else "precious/ was modified"


def truncated_model(world: Path, work: Path) -> list[str]:
    source = work / "source_run"
    model = source / "model" / "model.safetensors"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 3])
    return finetune("retrieval", world, work, "--model", str(source / "model"))


# -------------------------------------------------------------------------------------- resume faults
def latest_checkpoint(run: Path) -> Path:
    steps = sorted((run / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[-1]))
    return steps[-1]


def resume_args(world: Path, work: Path) -> list[str]:
    return [
        "pretrain",
        "--data",
        str(world),
        "--out",
        str(work / "source_run"),
        "--steps",
        "3",
        "--set",
        "train.ckpt_every=1",
        "--resume",
        str(work / "source_run"),
    ]


def resume_truncated(world: Path, work: Path) -> list[str]:
    model = latest_checkpoint(work / "source_run") / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    return resume_args(world, work)


def resume_deleted_latest(world: Path, work: Path) -> list[str]:
    shutil.rmtree(latest_checkpoint(work / "source_run"))
    return resume_args(world, work)


def resume_overwritten(world: Path, work: Path) -> list[str]:
    model = latest_checkpoint(work / "source_run") / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-5000:-4000] = os.urandom(1000)
    model.write_bytes(bytes(data))
    return resume_args(world, work)


def resume_all_damaged(world: Path, work: Path) -> list[str]:
    for step in (work / "source_run" / "checkpoints").glob("step_*"):
        model = step / "model.safetensors"
        model.write_bytes(model.read_bytes()[:100])
    return resume_args(world, work)


FAULTS: list[Fault] = [
    Fault("pretrain: image_text.jsonl is a directory", "silent loss", stream_is_directory, "image_text.jsonl"),
    Fault("pretrain: image_text.jsonl is a self-symlink", "silent loss", stream_self_symlink, "image_text.jsonl"),
    Fault("pretrain: region.jsonl deleted", "silent loss", region_deleted, "region.jsonl"),
    Fault(
        "data check: region.jsonl deleted (listed in the manifest)", "silent loss", region_deleted_check, "region.jsonl"
    ),
    Fault(
        "data check: image_text.jsonl is a directory, no manifest", "silent loss", stream_dir_check, "image_text.jsonl"
    ),
    Fault("finetune vqa: duplicated question_id", "silent loss", vqa_duplicate_question, "vqa_test.json"),
    Fault(
        "data check: duplicated vqa question_id, no manifest",
        "silent loss",
        vqa_duplicate_question_check,
        "vqa_test.json",
    ),
    Fault("finetune grounding: 100x80 image recorded as 224x224", "silent loss", image_size_mismatch, "images/"),
    Fault("data check: image size mismatch, no manifest", "silent loss", image_size_mismatch_check, "images/"),
    Fault("data check: NaN box, no manifest", "silent loss", nan_box, "region.jsonl"),
    Fault(
        "data check: caption cleans to empty, no manifest", "silent loss", caption_cleans_to_empty, "image_text.jsonl"
    ),
    Fault("data check: empty caption list, no manifest", "silent loss", empty_caption_list, "image_text.jsonl"),
    Fault("pretrain: latin-1 byte", "one line", latin1_byte, "image_text.jsonl"),
    Fault("pretrain --skip-bad: latin-1 byte skips one line", "one line", latin1_byte_skip, "skipped 1", survive=True),
    Fault("data check: UTF-16 file, no manifest", "one line", utf16_file, "image_text.jsonl"),
    Fault("data check: unreadable file", "one line", unreadable_file, "image_text.jsonl", needs_non_root=True),
    Fault("pretrain: absolute image path", "confinement", absolute_image_path, "image_text.jsonl"),
    Fault("pretrain: ../ image path out of the root", "confinement", escaping_image_path, "image_text.jsonl"),
    Fault("pretrain: --out is a file", "one line", out_is_file, "run"),
    Fault("pretrain: --out is read-only", "one line", out_read_only, "run", needs_non_root=True),
    Fault("pretrain: metrics.jsonl is a directory", "one line", metrics_is_directory, "metrics.jsonl"),
    Fault("pretrain: results.jsonl is a directory", "one line", results_is_directory, "results.jsonl"),
    Fault("pretrain: run folder locked by a live process", "one line", run_locked, ".lock"),
    Fault(
        "convert: --output is a non-empty folder",
        "destroy",
        convert_into_precious,
        "precious",
        check=precious_intact,
        extra={"source_run": True},
    ),
    Fault(
        "finetune: truncated model.safetensors",
        "one line",
        truncated_model,
        "model.safetensors",
        extra={"source_run": True},
    ),
    Fault(
        "resume: truncated latest model.safetensors",
        "resume",
        resume_truncated,
        "damaged",
        survive=True,
        extra={"source_run": True},
    ),
    Fault(
        "resume: latest checkpoint folder deleted",
        "resume",
        resume_deleted_latest,
        "step_",
        survive=True,
        extra={"source_run": True},
    ),
    Fault(
        "resume: 1000 bytes overwritten in the latest checkpoint",
        "resume",
        resume_overwritten,
        "damaged",
        survive=True,
        extra={"source_run": True},
    ),
    Fault("resume: every checkpoint damaged", "resume", resume_all_damaged, "checkpoint", extra={"source_run": True}),
]


# ------------------------------------------------------------------------------------------- classify
def classify(fault: Fault, outcome: Outcome, args: list[str]) -> tuple[str, str]:
    """(bucket, detail) of one run; see the module docstring for the buckets. ``data check`` lists every bad
    record (one line each), so it may print several error lines; any other command stops at the first."""
    err_lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in outcome.stderr:
        return "traceback", err_lines[-1] if err_lines else ""
    if fault.survive:
        said = fault.names in outcome.stderr or fault.names in outcome.stdout
        if outcome.rc == 0 and said:
            return "one-line", next((ln for ln in err_lines + outcome.stdout.splitlines() if fault.names in ln), "")
        return ("silent" if outcome.rc == 0 else "unclear"), (err_lines[-1] if err_lines else f"rc {outcome.rc}")
    if outcome.rc == 0:
        return "silent", "exit 0"
    errors = [line for line in err_lines if line.startswith("error:")]
    lists_all = args[:2] == ["data", "check"]
    if (len(errors) == 1 or (lists_all and errors)) and any(fault.names in line for line in errors):
        return "one-line", next(line for line in errors if fault.names in line)
    return "unclear", " | ".join(errors or err_lines[-2:])


def source_run(base: Path, world: Path) -> Path:
    """A tiny pre-training run with a checkpoint every step, made once and copied for each resume fault."""
    run = base / "source_run"
    if not run.exists():
        outcome = grainvl(["pretrain", "--data", str(world), "--out", str(run), *TINY_PRETRAIN], cwd=base)
        if outcome.rc != 0:
            raise SystemExit(f"could not make the source run:\n{outcome.stderr}")
    return run


def run_fault(fault: Fault, base: Path, world: Path) -> tuple[str, str, float]:
    if fault.needs_non_root and IS_ROOT:
        return "n/a", "root ignores permissions", 0.0
    work = Path(tempfile.mkdtemp(dir=base, prefix="fault_"))
    copy = work / "W"
    shutil.copytree(world, copy, symlinks=True)
    if fault.extra.get("source_run"):
        shutil.copytree(source_run(base, world), work / "source_run", symlinks=True)
    start = time.perf_counter()
    try:
        args = fault.apply(copy, work)
        bucket, detail = classify(fault, grainvl(args, cwd=work), args)
        if bucket == "one-line" and fault.check and (reason := fault.check(copy, work)):
            bucket, detail = "unclear", reason
    finally:
        for path in work.rglob("*"):  # undo chmod faults so the folder can be removed
            if not path.is_symlink():
                path.chmod(0o700 if path.is_dir() else 0o600)
        shutil.rmtree(work, ignore_errors=True)
    return bucket, detail, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only faults whose name contains this text (default: all)")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary folder, removed)")
    args = parser.parse_args()
    base = Path(args.keep or tempfile.mkdtemp(prefix="grainvl_faults_"))
    base.mkdir(parents=True, exist_ok=True)
    world = base / "world"
    if not world.exists():
        made = grainvl(["world", "--out", str(world), "--images", "60", "--videos", "4", "--seed", "1"], cwd=base)
        if made.rc != 0:
            raise SystemExit(made.stderr)
    counts: Counter[str] = Counter()
    print(f"{'bucket':<10} {'s':>5}  fault → what the user saw")
    for fault in (f for f in FAULTS if args.k in f.name):
        bucket, detail, seconds = run_fault(fault, base, world)
        counts[bucket] += 1
        print(f"{bucket:<10} {seconds:5.1f}  {fault.name} → {detail[:160]}", flush=True)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    tried = sum(counts.values()) - counts["n/a"]
    print(
        f"\nfaults tried: {tried}; one-line errors (or survived with one line): {counts['one-line']}; "
        f"tracebacks: {counts['traceback']}; silent passes: {counts['silent']}; unclear: {counts['unclear']}; "
        f"not applicable here: {counts['n/a']}"
    )
    return 1 if counts["traceback"] or counts["silent"] else 0


if __name__ == "__main__":
    sys.exit(main())
