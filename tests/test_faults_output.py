"""Output faults (issue 15): one line instead of a traceback, nothing destroyed that grainvl did not write,
one run per folder (the lock), and files and folders that follow the umask.

Every command case runs the CLI in-process and checks: exit status 2, exactly one stderr line naming the
path and the reason, no traceback, the folder listing unchanged, and (for runs) no training step taken.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grainvl.cli import main
from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.errors import DataError, OutputError
from grainvl.models.factory import load_model
from grainvl.recipes.scaffold import LOCK_FILE, RUN_FILES, RunLock, run_recipe
from grainvl.utils import fileio

PRETRAIN = ["--model", "xvlm-tiny", "--steps", "1", "--set", "train.progress=false", "train.track_energy=false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "w"
    generate_world(WorldConfig(images=8, videos=0, resolution=64, text_scenes=0, dialogues=0), out)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return load_model("xvlm-tiny", init_unimodal=False).save_pretrained(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture()
def precious(tmp_path: Path) -> Path:
    """A folder of someone else's files, which no command may touch without --overwrite."""
    folder = tmp_path / "precious"
    (folder / "notes").mkdir(parents=True)
    (folder / "thesis.txt").write_text("years of work")
    (folder / "notes" / "a.md").write_text("more")
    return folder


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with the bytes of each file (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ")
    return lines[0]


# ---------------------------------------------------------------------------------------------- run folders
def test_run_out_that_is_a_file_fails_before_training(world: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "run"):  # the folder itself, or a parent, is a file
        assert main(["pretrain", "--data", str(world), "--out", str(out), *PRETRAIN]) == 2
        assert one_error_line(capsys) == f"error: {blocker}: is a file, not a folder"
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("name", RUN_FILES)
def test_run_file_that_is_a_folder_fails_before_training(name: str, world: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)
    assert main(["pretrain", "--data", str(world), "--out", str(run), *PRETRAIN]) == 2
    assert one_error_line(capsys) == f"error: {run / name}: is a folder, not a file"
    assert sorted(p.name for p in run.iterdir()) == [name]  # no checkpoint, no metrics, no lock left behind


def test_run_in_a_foreign_folder_is_refused_and_nothing_changes(world: Path, precious: Path, capsys) -> None:
    before = listing(precious)
    assert main(["pretrain", "--data", str(world), "--out", str(precious), *PRETRAIN]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {precious}: folder is not empty and is not a grainvl run folder")
    assert listing(precious) == before


def _permissions_enforced(tmp_path: Path) -> bool:
    """False as root (or with CAP_DAC_OVERRIDE), where a read-only folder can be written anyway."""
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
    return False


def test_read_only_outputs_fail_before_any_work(world: Path, tmp_path: Path, capsys) -> None:
    if not _permissions_enforced(tmp_path):
        pytest.skip("permissions are not enforced for this user (root)")
    locked, run = tmp_path / "ro", tmp_path / "run"
    locked.mkdir()
    run.mkdir()
    (run / "results.jsonl").write_text("")
    (run / "results.jsonl").chmod(0o444)
    locked.chmod(0o555)
    try:
        cases = [
            (["pretrain", "--data", str(world), "--out", str(locked / "run"), *PRETRAIN], locked / "run"),
            (["pretrain", "--data", str(world), "--out", str(locked), *PRETRAIN], locked),
            (["pretrain", "--data", str(world), "--out", str(run), *PRETRAIN], run / "results.jsonl"),
            (["world", "--out", str(locked / "W"), "--images", "4", "--videos", "0", "--quiet"], locked),
        ]
        for argv, path in cases:
            assert main(argv) == 2
            assert one_error_line(capsys) == f"error: {path}: permission denied"
        assert list(locked.iterdir()) == [] and sorted(p.name for p in run.iterdir()) == ["results.jsonl"]
    finally:
        locked.chmod(0o755)


# ---------------------------------------------------------------------------------------------- run lock
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lock(run: Path, pid: int, host: str) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host, "started": "2024-05-01 10:00:00"}))


def test_run_holds_the_lock_while_it_runs_and_releases_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    seen = run_recipe(run, lambda r: json.loads((r.dir / LOCK_FILE).read_text()))
    assert seen["pid"] == os.getpid() and seen["host"] == socket.gethostname()
    assert not (run / LOCK_FILE).exists()
    with pytest.raises(ZeroDivisionError):  # released on failure too
        run_recipe(run, lambda r: 1 / 0)
    assert not (run / LOCK_FILE).exists()


def test_second_run_on_a_locked_folder_fails_in_one_line(world: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    _write_lock(run, os.getpid(), socket.gethostname())  # a live process: this one
    assert main(["pretrain", "--data", str(world), "--out", str(run), *PRETRAIN]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {run}: in use by pid {os.getpid()} on {socket.gethostname()} (started 2024-05-01")
    assert line.endswith(f"if that process is gone, remove {run / LOCK_FILE}")
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing trained, the holder's lock kept
    _write_lock(run, 12345, "another-host")  # another host: its pid cannot be checked, so never taken over
    with pytest.raises(OutputError, match="in use by pid 12345 on another-host"):
        RunLock.acquire(run)


def test_stale_lock_is_taken_over_with_one_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    dead = _dead_pid()
    _write_lock(run, dead, socket.gethostname())
    assert run_recipe(run, lambda r: json.loads((r.dir / LOCK_FILE).read_text())["pid"]) == os.getpid()
    err = capsys.readouterr().err.strip()
    assert err == f"{run / LOCK_FILE}: taking over the lock of pid {dead}, which is no longer running"
    assert not (run / LOCK_FILE).exists()


def test_a_lock_taken_over_meanwhile_is_not_released_by_the_old_holder(tmp_path: Path) -> None:
    lock = RunLock.acquire(tmp_path)
    _write_lock(tmp_path, 424242, "elsewhere")
    lock.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == 424242


@pytest.mark.slow
def test_torchrun_ranks_all_stop_on_rank_zeros_lock_fault(world: Path, tmp_path: Path) -> None:
    # Only rank 0 locks; its fault reaches rank 1 too, so no rank waits in a collective for a rank 0 that quit.
    run = tmp_path / "run"
    _write_lock(run, os.getpid(), socket.gethostname())
    with socket.socket() as probe:  # a free port: torchrun's static rendezvous cannot use port 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m", "grainvl", "pretrain"]
    cmd += ["--data", str(world), "--out", str(run), *PRETRAIN]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert done.stderr.count(f"error: {run}: in use by pid {os.getpid()}") == 2, done.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]


# ---------------------------------------------------------------------------------------------- other folders
def test_convert_refuses_a_foreign_output_before_loading(precious: Path, tmp_path: Path, capsys) -> None:
    before = listing(precious)
    # The input does not even exist: the output is checked first, before any (slow) load.
    argv = ["convert", "--from", "official-x2vlm", "--input", str(tmp_path / "none.th"), "--output", str(precious)]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert (
        line == f"error: {precious}: folder is not empty and was not written by this command; --overwrite replaces it"
    )
    assert listing(precious) == before


def test_convert_to_hf_replaces_only_with_overwrite(model_dir: Path, precious: Path, capsys) -> None:
    argv = ["convert", "--to", "hf-bert", "--input", str(model_dir), "--output", str(precious)]
    before = listing(precious)
    assert main(argv) == 2
    assert "--overwrite replaces it" in one_error_line(capsys)
    assert listing(precious) == before
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in precious.iterdir()) == ["config.json", "model.safetensors"]
    assert main(argv) == 0  # a model folder is what convert writes: replaced without --overwrite
    assert [p.name for p in precious.parent.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_export_refuses_a_foreign_output_before_loading(precious: Path, tmp_path: Path, capsys) -> None:
    before = listing(precious)
    assert main(["export", "onnx", "--model", str(tmp_path / "no-model"), "--out", str(precious)]) == 2
    assert one_error_line(capsys).startswith(f"error: {precious}: folder is not empty")
    assert listing(precious) == before


def test_tokenizer_train_refuses_a_foreign_output(world: Path, precious: Path, capsys) -> None:
    before = listing(precious)
    assert main(["tokenizer", "train", "--corpus", str(world), "--out", str(precious)]) == 2
    assert one_error_line(capsys).startswith(f"error: {precious}: folder is not empty")
    assert listing(precious) == before


def test_world_refuses_a_foreign_folder_and_replaces_a_world(precious: Path, tmp_path: Path, capsys) -> None:
    small = ["--images", "4", "--videos", "0", "--resolution", "64", "--set", "text_scenes=0", "dialogues=0", "--quiet"]
    before = listing(precious)
    assert main(["world", "--out", str(precious), *small]) == 2
    assert one_error_line(capsys).startswith(f"error: {precious}: folder is not empty")
    assert listing(precious) == before
    world = tmp_path / "W"
    assert main(["world", "--out", str(world), *small]) == 0
    first = listing(world)
    (world / "stale.txt").write_text("left by an older world")
    assert main(["world", "--out", str(world), *small]) == 0  # an earlier world is replaced, stale files and all
    assert listing(world) == first
    assert main(["world", "--out", str(precious), *small, "--overwrite"]) == 0
    assert not (precious / "thesis.txt").exists() and (precious / "manifest.json").is_file()


def test_save_pretrained_never_deletes_a_foreign_folder(model_dir: Path, precious: Path, tmp_path: Path) -> None:
    model = load_model(model_dir)
    before = listing(precious)
    with pytest.raises(OutputError, match="folder is not empty"):
        model.save_pretrained(precious)
    assert listing(precious) == before
    stage = tmp_path / "stage"  # a training run's folder that also receives its model (a compress stage)
    stage.mkdir()
    (stage / "metrics.jsonl").write_text('{"step": 1}\n')
    model.save_pretrained(stage)  # grainvl wrote it: replaced, as before
    assert sorted(p.name for p in stage.iterdir()) == ["config.json", "model.safetensors"]
    model.save_pretrained(precious, overwrite=True)
    assert not (precious / "thesis.txt").exists()


# ---------------------------------------------------------------------------------------------- swaps
def test_failed_swap_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_rename = os.rename

    def rename(src, dst):  # the new folder cannot be moved in (say, a full disk's metadata)
        if Path(dst) == final and (Path(src) / "new.txt").exists():
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(fileio.os, "rename", rename)
    with pytest.raises(OutputError, match="no space left on device"), fileio.staged_dir(final, overwrite=True) as new:
        (new / "new.txt").write_text("new")
    monkeypatch.undo()
    assert listing(final) == {"old.txt": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # neither the staged nor the set-aside folder is left


def test_staged_folder_fills_an_empty_folder_in_place(tmp_path: Path) -> None:
    final = tmp_path / "empty"
    final.mkdir()
    inode = final.stat().st_ino  # e.g. the working folder, or a mount point: it must stay the same folder
    with fileio.staged_dir(final) as staged:
        (staged / "a.txt").write_text("a")
    assert final.stat().st_ino == inode and listing(final) == {"a.txt": b"a"}


# ---------------------------------------------------------------------------------------------- full disk
def _enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_full_disk_in_an_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(OutputError) as info, fileio.atomic_file(target) as tmp:
        raise _enospc(tmp)
    assert str(info.value) == f"{target}: no space left on device"
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.parametrize("free", [0, 10**12])
def test_torch_save_runtime_error_is_blamed_on_a_full_disk_only(tmp_path: Path, monkeypatch, free: int) -> None:
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda _: type("Usage", (), {"free": free})())
    torch_message = "[enforce fail at inline_container.cc:672] . unexpected pos 2944 vs 2838"
    with pytest.raises(OutputError if free == 0 else RuntimeError) as info, fileio.atomic_file(tmp_path / "state.pt"):
        raise RuntimeError(torch_message)
    expected = f"{tmp_path / 'state.pt'}: no space left on device" if free == 0 else torch_message
    assert str(info.value) == expected


def test_full_disk_in_safetensors_save_and_jsonl_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    def save_file(tensors, filename, metadata=None):
        raise _enospc(filename)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(OutputError, match=r"model\.safetensors: no space left on device$"):
        fileio.save_model_safetensors(tmp_path / "model.safetensors", {"w": torch.zeros(2)})

    def full_open(file, *args, **kwargs):
        raise _enospc(file)

    monkeypatch.setattr(fileio, "open", full_open, raising=False)  # shadows the builtin inside fileio only
    with pytest.raises(OutputError, match=r"metrics\.jsonl: no space left on device$"):
        fileio.append_jsonl_line(tmp_path / "metrics.jsonl", {"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_full_disk_during_a_command_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    def write_bytes(self: Path, data: bytes) -> int:
        raise _enospc(self)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    out = tmp_path / "W"
    assert main(["world", "--out", str(out), "--images", "4", "--videos", "0", "--resolution", "64", "--quiet"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {out}/") and line.endswith(": no space left on device")
    assert list(tmp_path.iterdir()) == []  # the half-made world is gone


# ---------------------------------------------------------------------------------------------- CLI handler
@pytest.mark.parametrize(
    ("error", "line"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/data/out"), "error: /data/out: permission denied"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "r/results.jsonl"), "error: r/results.jsonl: is a folder"),
        (FileExistsError(errno.EEXIST, "File exists", "out"), "error: out: already exists"),
        (OSError(errno.ENOSPC, "No space left on device", "ckpt"), "error: ckpt: no space left on device"),
        (OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b"), "error: a -> b: invalid cross-device link"),
        (FileNotFoundError("x.th: no such checkpoint file"), "error: x.th: no such checkpoint file"),
    ],
)
def test_cli_turns_any_os_error_into_one_line(error: OSError, line: str, monkeypatch, capsys) -> None:
    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr("grainvl.commands.world._cmd_world", fail)
    assert main(["world", "--out", "x"]) == 2
    assert one_error_line(capsys) == line
    monkeypatch.setenv("GRAINVL_DEBUG", "1")
    with pytest.raises(type(error)):
        main(["world", "--out", "x"])


def test_cli_keeps_the_traceback_of_a_bug(monkeypatch) -> None:
    def fail(args: object) -> int:
        raise KeyError("a bug we want to see")

    monkeypatch.setattr("grainvl.commands.world._cmd_world", fail)
    with pytest.raises(KeyError):
        main(["world", "--out", "x"])


# ---------------------------------------------------------------------------------------------- bad weights
@pytest.mark.parametrize("keep", [7, 100, 5000])
def test_truncated_safetensors_names_the_file(keep: int, model_dir: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (model_dir / name).exists():
            (broken / name).write_bytes((model_dir / name).read_bytes())
    (broken / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:keep])
    with pytest.raises(DataError, match="not a valid safetensors file"):
        fileio.load_model_safetensors(broken / "model.safetensors")
    assert main(["export", "onnx", "--model", str(broken), "--out", str(tmp_path / "onnx")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(
        f"error: {broken / 'model.safetensors'}: not a valid safetensors file (truncated or corrupt)"
    )
    assert not (tmp_path / "onnx").exists()


# ---------------------------------------------------------------------------------------------- permissions
def test_written_files_and_folders_follow_the_umask(model_dir: Path, tmp_path: Path) -> None:
    # mkstemp/mkdtemp make 0600/0700 and safetensors re-creates its file 0600: all widened to the umask.
    modes = {p.name: p.stat().st_mode & 0o777 for p in [model_dir, *model_dir.iterdir()]}
    assert modes == {name: fileio.DIR_MODE if name == "m" else fileio.FILE_MODE for name in modes}
    fileio.atomic_write_text(tmp_path / "a.json", "{}")
    temp_dir = fileio.make_temp_dir_beside(tmp_path / "checkpoint")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == fileio.FILE_MODE
    assert temp_dir.stat().st_mode & 0o777 == fileio.DIR_MODE and temp_dir.parent == tmp_path


# ------------------------------------------------------------------------------------ compress and bench outputs
def test_compress_and_bench_check_their_outputs_before_any_work(
    world: Path, precious: Path, tmp_path: Path, capsys
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    compress = ["compress", "--teacher", "xvlm-tiny", "--recipe", "distill", "--world", str(world), "--quiet"]
    assert main([*compress, "--out", str(blocker)]) == 2
    assert one_error_line(capsys) == f"error: {blocker}: is a file, not a folder"
    before = listing(precious)
    assert main([*compress, "--out", str(precious)]) == 2  # a foreign non-empty folder: refused, untouched
    assert one_error_line(capsys).startswith(f"error: {precious}: folder is not empty and is not a grainvl run")
    assert listing(precious) == before
    out = tmp_path / "bench"
    (out / "results.jsonl").mkdir(parents=True)
    bench = ["bench", "--models", "xvlm-tiny", "--tasks", "retrieval", "--world", str(world), "--out", str(out)]
    assert main(bench) == 2
    assert one_error_line(capsys) == f"error: {out / 'results.jsonl'}: is a folder, not a file"
    assert [p.name for p in out.iterdir()] == ["results.jsonl"]  # nothing fine-tuned, nothing written
