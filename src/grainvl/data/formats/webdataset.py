"""WebDataset tar shards, written and read with the standard library's ``tarfile``.

A shard is a plain tar file. Each sample is a run of adjacent members sharing a key: the member
name up to the first dot of its base name (``train/000123.jpg`` has key ``train/000123`` and
extension ``jpg``), the convention of the ``webdataset`` library. Members of one sample must be
adjacent; a key that comes back after another sample is an error (the library would silently
split it into two samples).

Written shards are byte-deterministic: samples in write order, members of a sample sorted by
extension, every header with mtime 0, uid/gid 0, empty uname/gname and mode 0o644. Each shard is
written to a temp file and renamed into place, so a crash never leaves a half-written shard under
the final name.

Sample dicts: ``{"__key__": str, "<ext>": value}``. Writing, ``bytes`` are stored as is, ``str`` as
UTF-8 and ``dict``/``list`` as JSON. Reading, ``json`` members come back decoded, ``txt`` members
as ``str`` and everything else as ``bytes``, so a read sample re-writes to the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError

from grainvl.data.formats import validate
from grainvl.data.formats.registry import FormatSpec, register
from grainvl.errors import BadRecords, DataError
from grainvl.utils import fileio
from grainvl.utils.fileio import dumps, open_input

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp"})
BLOCK = tarfile.BLOCKSIZE  # 512: tar headers and data are padded to whole blocks


def _encode(key: str, ext: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return dumps(value).encode("utf-8")
    raise TypeError(f"sample {key!r}: value of {ext!r} should be bytes, str, dict or list, got {type(value).__name__}")


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    """A tar header with every field that could vary between runs or machines fixed."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class ShardWriter:
    """Write samples into numbered shards, starting a new one when either limit would be passed.

    ``pattern`` is a %-format with one integer field, e.g. ``"out/train-%06d.tar"`` (shard 0
    first). A shard holds at most ``max_count`` samples and at most ``max_size`` bytes of headers
    and padded member data (a single larger sample still gets a shard of its own). ``shards``
    lists the shard paths started so far (the last one appears on disk when it is closed). Use as
    a context manager; on an exception the shard in progress is discarded and earlier shards kept.
    """

    def __init__(self, pattern: str, max_count: int = 1000, max_size: float = 1e9) -> None:
        if max_count < 1 or max_size < 1:
            raise ValueError(f"max_count and max_size should be positive, got {max_count} and {max_size}")
        self.pattern = pattern
        self.max_count = max_count
        self.max_size = max_size
        self.shards: list[Path] = []
        self._file: BinaryIO | None = None
        self._tar: tarfile.TarFile | None = None
        self._tmp_path = ""
        self._count = 0
        self._size = 0
        self._keys_in_shard: set[str] = set()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self._abort()

    def write(self, sample: dict[str, Any]) -> None:
        """Append one sample; keys starting with ``__`` other than ``__key__`` are not stored."""
        key = sample.get("__key__")
        if not isinstance(key, str) or not key or "." in key.rsplit("/", 1)[-1]:
            raise ValueError(f"sample key should be a non-empty string without a dot in its base name, got {key!r}")
        members = [(ext, _encode(key, ext, v)) for ext, v in sorted(sample.items()) if not ext.startswith("__")]
        if not members or any(not ext or "/" in ext for ext, _ in members):
            raise ValueError(f"sample {key!r} needs at least one member with a non-empty extension without '/'")
        size = sum(BLOCK + -(-len(data) // BLOCK) * BLOCK for _, data in members)
        if self._tar is None or self._count >= self.max_count or self._size + size > self.max_size:
            self._next_shard()
        assert self._tar is not None
        if key in self._keys_in_shard:
            raise ValueError(f"sample key {key!r} already written to this shard; readers would merge or reject it")
        for ext, data in members:
            self._tar.addfile(_member_info(f"{key}.{ext}", len(data)), io.BytesIO(data))
        self._count += 1
        self._size += size
        self._keys_in_shard.add(key)

    def close(self) -> None:
        """Finish the shard in progress (end-of-archive blocks, then rename into place)."""
        if self._tar is None or self._file is None:
            return
        self._tar.close()
        self._file.close()
        os.chmod(self._tmp_path, 0o666 & ~fileio._UMASK)  # mkstemp makes 0600; shards are shared data
        os.replace(self._tmp_path, self.shards[-1])
        self._tar = self._file = None

    def _next_shard(self) -> None:
        self.close()
        path = Path(self.pattern % len(self.shards))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self._file = os.fdopen(fd, "wb")
        # Held open across write() calls and closed in close()/_abort(), so no `with` block here.
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.shards.append(path)
        self._count = self._size = 0
        self._keys_in_shard = set()

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
            os.unlink(self._tmp_path)
            self.shards.pop()
        self._tar = self._file = None


def split_name(name: str) -> tuple[str, str] | None:
    """``"dir/000123.seg.png"`` -> ``("dir/000123", "seg.png")``; None when the base name has no dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext


class _TarCorrupt(Exception):
    """Raised inside member iteration; turned into a DataError that also names the sample."""

    def __init__(self, member_index: int, reason: str) -> None:
        super().__init__(reason)
        self.member_index = member_index
        self.reason = reason


def _iter_members(shard: BinaryIO) -> Iterator[tuple[int, tarfile.TarInfo, bytes | None]]:
    """Yield ``(member_index, header, data)``; data is None for members that are not regular files.

    ``tarfile`` treats a garbled header or a cut after a member as the end of the archive and stops
    without an error, so after the last member this checks that the end-of-archive marker (a zero
    block) really is there.
    """
    index = 0
    try:
        with tarfile.open(fileobj=shard, mode="r:") as tar:
            while (member := tar.next()) is not None:
                reader = tar.extractfile(member) if member.isfile() else None
                yield index, member, reader.read() if reader is not None else None
                index += 1
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError) as e:
        raise _TarCorrupt(index, f"corrupt or truncated tar: {e}") from None
    shard.seek(end)
    block = shard.read(BLOCK)
    # One zero block is enough: everything before it was read intact, so no sample is lost.
    if len(block) < BLOCK or block.strip(b"\0"):
        raise _TarCorrupt(index, f"corrupt or truncated tar: no valid header or end-of-archive marker at byte {end}")


def _iter_runs(path: Path, shard: BinaryIO, bad: BadRecords) -> Iterator[tuple[int, str, list[tuple[str, bytes]]]]:
    """Group adjacent members by key: yield ``(sample_index, key, [(ext, data)])`` in shard order.

    Directory entries are skipped (they hold no data); other non-file members, names without an
    extension and names that would extract outside the shard's folder (absolute, ``..``) are reported.
    A corrupt tar ends the shard, reported with member and sample index; the sample in progress at that
    point is dropped because it may be incomplete.
    """
    sample_index, key, members = 0, None, []
    extract_root = path.with_suffix("")  # where `tar -x` of this shard would put its members
    try:
        for member_index, member, data in _iter_members(shard):
            try:
                validate.confined_path(extract_root, member.name, path, f"member {member_index}", allow_outside=False)
            except DataError as error:
                bad.handle(error)
                continue
            parts = split_name(member.name)
            if data is None or parts is None:
                if not member.isdir():
                    what = "is not a regular file" if data is None else "has no '.ext' after the key"
                    bad.handle(DataError(path, f"member {member_index}", f"member {member.name!r} {what}"))
                continue
            if parts[0] != key and key is not None:
                yield sample_index, key, members
                sample_index, members = sample_index + 1, []
            key = parts[0]
            members.append((parts[1], data))
    except _TarCorrupt as e:
        dropped = f"; sample {sample_index} (key {key!r}) was in progress and is dropped" if key is not None else ""
        bad.handle(DataError(path, f"member {e.member_index} (sample {sample_index})", e.reason + dropped))
        return
    if key is not None:
        yield sample_index, key, members


def iter_shard(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> Iterator[dict]:
    """Stream the samples of one shard as dicts (``__key__`` plus one entry per member extension).

    Errors name the shard and ``sample N (key K)`` (N counts samples from 0) or ``member M`` (tar
    members from 0). With ``image_root`` set to any value, image members (jpg, jpeg, png, webp) are
    fully decoded with Pillow to check them; the bytes are returned unchanged. With
    ``bad.skip_bad`` a bad sample is recorded and left out; a corrupt tar ends the shard.
    """
    path = Path(path)
    bad = bad or BadRecords()
    with open_input(path, "rb") as shard:
        seen: set[str] = set()
        for sample_index, key, members in _iter_runs(path, shard, bad):
            where = f"sample {sample_index} (key {key!r})"
            try:
                if key in seen:
                    raise DataError(path, where, "members not adjacent: this key already appeared earlier in the shard")
                seen.add(key)
                sample = _decode_sample(key, members, path, where, check_images=image_root is not None)
            except DataError as error:
                bad.handle(error)
                continue
            yield sample


def _decode_sample(key: str, members: list[tuple[str, bytes]], path: Path, where: str, check_images: bool) -> dict:
    sample: dict[str, Any] = {"__key__": key}
    for ext, data in members:
        name = f"{key}.{ext}"
        if ext in sample:
            raise DataError(path, where, f"member {name!r} appears twice")
        kind = ext.rsplit(".", 1)[-1].lower()  # "seg.json" is JSON too, as in the webdataset decoders
        if kind == "json":
            try:
                sample[ext] = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(path, where, f"bad JSON in member {name!r}: {e}") from None
        elif kind == "txt":
            try:
                sample[ext] = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, where, f"member {name!r} is not UTF-8 text: {e}") from None
        else:
            if check_images and kind in IMAGE_EXTENSIONS:
                _check_image_bytes(data, path, where, name)
            sample[ext] = data
    return sample


def _check_image_bytes(data: bytes, path: Path, where: str, name: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a full decode: truncated data fails here, not at training time
    except UnidentifiedImageError:
        # Pillow's own message names the BytesIO object's memory address, which helps no one.
        raise DataError(path, where, f"corrupt image member {name!r}: not in any image format Pillow reads") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(path, where, f"corrupt image member {name!r}: {e}") from None


def read_shard(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[dict]:
    """All samples of a shard as a list (the registry's reader); see :func:`iter_shard`."""
    return list(iter_shard(path, bad, image_root))


SPEC = register(
    FormatSpec(
        name="webdataset",
        description="WebDataset tar shard: samples as adjacent members sharing a key (000123.jpg, 000123.json)",
        patterns=("*.tar",),
        read=read_shard,
    )
)
