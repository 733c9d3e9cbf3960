"""Text formats (GLUE TSV, SQuAD v1.1, ConvAI2) and WebDataset shards: round trips on hand-written
fixtures in the official schemas, and one clear error per kind of bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from grainvl.data.formats import convai2, glue, squad, webdataset
from grainvl.errors import BadRecords, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "formats" / "text"


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def assert_error(error: pytest.ExceptionInfo[DataError], file: Path, record: str, reason: str) -> None:
    message = str(error.value)
    assert file.name in message and record in message and reason in message, message
    assert error.value.record is not None and record in str(error.value.record)


# --- GLUE TSV -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sst2_train.tsv", "mrpc_dev.tsv"])
def test_glue_round_trip_is_byte_identical(tmp_path: Path, name: str) -> None:
    table = glue.read_tsv(FIXTURES / name)
    glue.write_tsv(tmp_path / name, table["columns"], table["rows"])
    assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes()


def test_glue_reads_official_columns_and_keeps_quotes_and_spaces() -> None:
    sst2 = glue.read_tsv(FIXTURES / "sst2_train.tsv")
    assert sst2["columns"] == ["sentence", "label"]
    assert [r["label"] for r in sst2["rows"]] == ["1", "0", "1"]
    assert sst2["rows"][2]["sentence"] == '" a wonderful scene " of two yellow cones '  # no CSV quoting in GLUE
    mrpc = glue.read_tsv(FIXTURES / "mrpc_dev.tsv")
    assert mrpc["columns"] == ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    assert mrpc["rows"][1]["#2 String"] == "A yellow cone lies beside one green cylinder."


def test_glue_reads_crlf_and_byte_order_mark_like_lf(tmp_path: Path) -> None:
    crlf = tmp_path / "crlf.tsv"
    crlf.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "sst2_train.tsv").read_bytes().replace(b"\n", b"\r\n"))
    assert glue.read_tsv(crlf) == glue.read_tsv(FIXTURES / "sst2_train.tsv")


@pytest.mark.parametrize(
    ("body", "record", "reason"),
    [
        ("a fine cube\t1\textra\n", "line 3", "expected 2 tab-separated fields, got 3"),
        ("no label here\n", "line 3", "expected 2 tab-separated fields, got 1"),
        (" \t1\n", "line 3", "empty text in column 'sentence'"),
        ("a fine cube\t\n", "line 3", "missing value in label column 'label'"),
    ],
)
def test_glue_bad_rows_name_file_line_and_reason(tmp_path: Path, body: str, record: str, reason: str) -> None:
    path = write_text(tmp_path / "train.tsv", "sentence\tlabel\na red cube\t1\n" + body)
    with pytest.raises(DataError) as error:
        glue.read_tsv(path)
    assert_error(error, path, record, reason)


def test_glue_bad_utf8_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"sentence\tlabel\nok\t1\nbad \xff byte\t0\n")
    with pytest.raises(DataError) as error:
        glue.read_tsv(path)
    assert_error(error, path, "line 3", "not UTF-8")
    with pytest.raises(DataError, match="empty file"):
        glue.read_tsv(write_text(tmp_path / "empty.tsv", ""))


def test_glue_skip_bad_keeps_good_rows_and_lists_every_bad_one(tmp_path: Path) -> None:
    path = write_text(tmp_path / "train.tsv", "sentence\tlabel\ngood one\t1\nbroken\n\t0\ngood two\t0\n")
    bad = BadRecords(skip_bad=True)
    table = glue.read_tsv(path, bad)
    assert [r["sentence"] for r in table["rows"]] == ["good one", "good two"]
    assert [e.record for e in bad.errors] == ["line 3", "line 4"]


@pytest.mark.parametrize(
    ("columns", "rows", "reason"),
    [
        (["sentence", "label"], [{"sentence": "a\ttab", "label": "1"}], "tab or line break"),
        (["sentence", "label"], [{"sentence": "two\nlines", "label": "1"}], "tab or line break"),
        (["sentence", "label"], [{"sentence": "no label"}], "missing ['label']"),
        (["sentence", "sentence"], [], "duplicate column"),
    ],
)
def test_glue_writer_refuses_what_tsv_cannot_hold(tmp_path: Path, columns: list, rows: list, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        glue.write_tsv(tmp_path / "out.tsv", columns, rows)
    assert not (tmp_path / "out.tsv").exists()


# --- SQuAD v1.1 -----------------------------------------------------------------------------------


def squad_obj(context: str = "A red cube and a blue sphere.", **qa_fields: object) -> dict:
    qa = {"answers": [{"answer_start": 2, "text": "red"}], "question": "What colour is the cube?", "id": "q1"}
    qa.update(qa_fields)
    return {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [qa]}]}], "version": "1.1"}


def test_squad_round_trip_and_hf_examples(tmp_path: Path) -> None:
    obj = squad.read_squad(FIXTURES / "train-v1.1.json")
    assert obj == json.loads((FIXTURES / "train-v1.1.json").read_text(encoding="utf-8"))
    squad.write_squad(tmp_path / "train-v1.1.json", obj)
    assert squad.read_squad(tmp_path / "train-v1.1.json") == obj
    examples = squad.squad_examples(obj)
    assert [e["id"] for e in examples] == ["00000001-0", "00000001-1", "00000001-2", "00000002-0", "00000002-1"]
    assert list(examples[1]) == ["id", "title", "context", "question", "answers"]
    assert examples[1]["answers"] == {"text": ["rubber", "rubber", "made of rubber"], "answer_start": [100, 100, 92]}
    # Offsets count characters, not UTF-8 bytes: the context starts with "Fjällräven".
    last = examples[3]
    start = last["answers"]["answer_start"][0]
    assert last["context"][start : start + len("the yellow cone")] == "the yellow cone"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (squad_obj(answers=[{"answer_start": 3, "text": "red"}]), "qa id 'q1': answer 'red' does not match"),
        (squad_obj(answers=[{"answer_start": -1, "text": "red"}]), "does not match"),
        (squad_obj(question="  "), "empty question"),
        (squad_obj(answers=[]), "qa id 'q1' has no answers"),
        (squad_obj(answers=[{"answer_start": "2", "text": "red"}]), "field 'answer_start' should be int"),
    ],
)
def test_squad_bad_questions_name_the_qa(tmp_path: Path, obj: dict, reason: str) -> None:
    path = write_text(tmp_path / "dev-v1.1.json", json.dumps(obj))
    with pytest.raises(DataError) as error:
        squad.read_squad(path)
    assert_error(error, path, "data[0].paragraphs[0].qas[0] (id q1)", reason)
    with pytest.raises(ValueError, match="not valid SQuAD"):
        squad.write_squad(tmp_path / "out-v1.1.json", obj)


def test_squad_duplicate_ids_and_skip_bad(tmp_path: Path) -> None:
    obj = squad_obj()
    paragraph = obj["data"][0]["paragraphs"][0]
    paragraph["qas"].append(dict(paragraph["qas"][0], question="Is it red?"))  # same id "q1"
    paragraph["qas"].append(dict(paragraph["qas"][0], id="q3"))
    path = write_text(tmp_path / "dev-v1.1.json", json.dumps(obj))
    with pytest.raises(DataError) as error:
        squad.read_squad(path)
    assert_error(error, path, "qas[1] (id q1)", "duplicate qa id 'q1'")
    bad = BadRecords(skip_bad=True)
    kept = squad.read_squad(path, bad)
    assert [e["id"] for e in squad.squad_examples(kept)] == ["q1", "q3"]
    assert len(bad.errors) == 1


def test_squad_malformed_json_and_top_level(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"line 2: malformed JSON"):
        squad.read_squad(write_text(tmp_path / "a-v1.1.json", '{"data":\n [,]}'))
    with pytest.raises(DataError, match="missing list field 'data'"):
        squad.read_squad(write_text(tmp_path / "b-v1.1.json", '{"version": "1.1"}'))


# --- ConvAI2 --------------------------------------------------------------------------------------


def test_convai2_reads_episodes_and_rewrites_identically(tmp_path: Path) -> None:
    episodes = convai2.read_convai2(FIXTURES / "train_both_original.txt")
    assert len(episodes) == 2
    first, second = episodes
    assert first["your_persona"] == ["i like red cubes.", "i have two cats."]
    assert first["partner_persona"] == ["i paint blue spheres.", "i live by the sea."]
    assert first["turns"][0] == {
        "text": "hi ! what do you like to do ?",
        "labels": ["i collect red cubes . and you ?"],
        "candidates": ["i live by the sea .", "sounds fun !", "i collect red cubes . and you ?"],
    }
    assert second["turns"][0]["text"] == "__SILENCE__" and len(second["turns"]) == 2
    convai2.write_convai2(tmp_path / "train_both_original.txt", episodes)
    assert (tmp_path / "train_both_original.txt").read_bytes() == (FIXTURES / "train_both_original.txt").read_bytes()


def test_convai2_none_variant_without_personas_or_candidates(tmp_path: Path) -> None:
    path = write_text(tmp_path / "valid_none_original.txt", "1 hello\thi there\n2 how are you ?\tfine\n1 yo\they\n")
    episodes = convai2.read_convai2(path)
    assert [len(e["turns"]) for e in episodes] == [2, 1]
    assert episodes[0]["your_persona"] == [] and episodes[0]["turns"][1]["candidates"] == []


CONVAI2_GOOD = "1 your persona: i like cubes.\n2 hi\thello\t\tbye|hello\n"


@pytest.mark.parametrize(
    ("text", "record", "reason"),
    [
        (CONVAI2_GOOD + "4 how are you ?\tgood\t\tbad|good\n", "line 3", "line number 4 out of sequence: expected 3"),
        ("2 your persona: i like cubes.\n", "line 1", "out of sequence: expected 1"),
        (CONVAI2_GOOD + "3 how are you ? good\n", "line 3", "missing tab"),
        (CONVAI2_GOOD + "3 how are you ?\tgood\t\tbad|fine\n", "line 3", "response 'good' is not among the 2"),
        (CONVAI2_GOOD + "3 your persona: late.\n", "line 3", "persona line after the dialogue has started"),
        ("hello\tthere\n", "line 1", "expected '<line number> <text>'"),
        ("1 your persona: i like cubes.\n", "line 1", "episode has no dialogue turns"),
    ],
)
def test_convai2_bad_lines_name_file_line_and_reason(tmp_path: Path, text: str, record: str, reason: str) -> None:
    path = write_text(tmp_path / "train_self_original.txt", text)
    with pytest.raises(DataError) as error:
        convai2.read_convai2(path)
    assert_error(error, path, record, reason)


def test_convai2_skip_bad_drops_only_bad_lines(tmp_path: Path) -> None:
    text = CONVAI2_GOOD + "3 no tab here\n4 and you ?\tfine\t\tfine|bad\n1 your persona: i run.\n2 new\tepisode\n"
    bad = BadRecords(skip_bad=True)
    episodes = convai2.read_convai2(write_text(tmp_path / "train_self_original.txt", text), bad)
    assert [[t["text"] for t in e["turns"]] for e in episodes] == [["hi", "and you ?"], ["new"]]
    assert [e.record for e in bad.errors] == ["line 3"]


@pytest.mark.parametrize(
    ("turn", "reason"),
    [
        ({"text": "hi", "labels": ["a|b"], "candidates": ["a|b"]}, "contains '|'"),
        ({"text": "hi", "labels": ["x"], "candidates": ["a", "b"]}, "not among the 2 candidates"),
        ({"text": "hi\tthere", "labels": ["a"], "candidates": ["a"]}, "tab or line break"),
    ],
)
def test_convai2_writer_refuses_unrepresentable_turns(tmp_path: Path, turn: dict, reason: str) -> None:
    episode = {"your_persona": ["p"], "partner_persona": [], "turns": [turn]}
    with pytest.raises(ValueError, match=reason):
        convai2.write_convai2(tmp_path / "x_self_original.txt", [episode])


# --- WebDataset -----------------------------------------------------------------------------------


def jpeg_bytes(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def samples(count: int) -> list[dict]:
    return [
        {
            "__key__": f"{i:06d}",
            "jpg": jpeg_bytes((10 * i, 0, 0)),
            "json": {"id": i, "caption": f"cube {i}"},
            "txt": "é",
        }
        for i in range(count)
    ]


def write_shards(pattern: str, items: list[dict], **limits: int) -> list[Path]:
    with webdataset.ShardWriter(pattern, **limits) as writer:
        for sample in items:
            writer.write(sample)
    return writer.shards


def test_webdataset_two_shards_read_back_and_rewrite_byte_identical(tmp_path: Path) -> None:
    originals = samples(5)
    shards = write_shards(str(tmp_path / "a" / "train-%06d.tar"), originals, max_count=3)
    assert [p.name for p in shards] == ["train-000000.tar", "train-000001.tar"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["train-000000.tar", "train-000001.tar"]
    read = [s for shard in shards for s in webdataset.iter_shard(shard, image_root=tmp_path)]
    assert read == originals
    again = write_shards(str(tmp_path / "b" / "train-%06d.tar"), read, max_count=3)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in shards]
    with tarfile.open(shards[0]) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["000000.jpg", "000000.json", "000000.txt"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}


def test_webdataset_size_limit_rolls_over_and_failure_leaves_no_partial_shard(tmp_path: Path) -> None:
    same_size = [dict(s, jpg=jpeg_bytes()) for s in samples(4)]
    [one] = write_shards(str(tmp_path / "one-%03d.tar"), same_size[:1])
    with tarfile.open(one) as tar:
        last = tar.getmembers()[-1]
    sample_bytes = last.offset_data + -(-last.size // 512) * 512  # headers + padded data of one sample
    assert len(write_shards(str(tmp_path / "two-%03d.tar"), same_size, max_size=2 * sample_bytes)) == 2
    assert len(write_shards(str(tmp_path / "all-%03d.tar"), same_size, max_size=2 * sample_bytes - 1)) == 4
    with pytest.raises(TypeError), webdataset.ShardWriter(str(tmp_path / "f-%03d.tar"), max_count=1) as writer:
        for sample in samples(2):  # shard 0 is finished when shard 1 starts
            writer.write(sample)
        writer.write({"__key__": "000002", "cls": 3.5})  # floats are not a storable value
    assert sorted(p.name for p in tmp_path.glob("f-*")) == ["f-000.tar"]  # shard 1, in progress, is discarded
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_webdataset_writer_rejects_bad_keys(tmp_path: Path) -> None:
    with webdataset.ShardWriter(str(tmp_path / "k-%03d.tar")) as writer:
        with pytest.raises(ValueError, match="without a dot"):
            writer.write({"__key__": "a.b", "txt": "x"})
        writer.write({"__key__": "a", "txt": "x"})
        writer.write({"__key__": "b", "txt": "y"})
        with pytest.raises(ValueError, match="already written to this shard"):
            writer.write({"__key__": "a", "json": {}})


def raw_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            tar.addfile(webdataset._member_info(name, len(data)), io.BytesIO(data))
    return path


def test_webdataset_truncated_and_corrupt_shards(tmp_path: Path) -> None:
    [shard] = write_shards(str(tmp_path / "w-%03d.tar"), samples(2))
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        offsets = [m.offset for m in tar.getmembers()]  # header positions; members 3.. belong to sample 1
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: offsets[0] + 512 + 100])  # inside the data of member 0 (000000.jpg)
    with pytest.raises(DataError) as error:
        list(webdataset.iter_shard(cut))
    assert_error(error, cut, "member 0 (sample 0)", "corrupt or truncated tar: unexpected end of data")
    cut.write_bytes(data[: offsets[3]])  # exactly after sample 0: tarfile alone would see a clean end
    with pytest.raises(DataError) as error:
        list(webdataset.iter_shard(cut))
    assert_error(error, cut, "member 3 (sample 0)", "no valid header or end-of-archive marker")
    garbled = bytearray(data)
    garbled[offsets[3] : offsets[3] + 100] = b"x" * 100  # sample 1's first header
    cut.write_bytes(bytes(garbled))
    with pytest.raises(DataError, match="member 3"):
        list(webdataset.iter_shard(cut))


def test_webdataset_bad_samples_and_skip_bad(tmp_path: Path) -> None:
    shard = raw_tar(
        tmp_path / "bad.tar",
        [
            ("000000.json", b'{"id": 0}'),
            ("000001.json", b'{"id": 1,'),
            ("000002.jpg", b"\xff\xd8 not really a jpeg"),
            ("000003.json", b"{}"),
            ("000003.txt", b"three"),
            ("000004.json", b"{}"),
            ("000003.cls", b"3"),
        ],
    )
    with pytest.raises(DataError) as error:
        list(webdataset.iter_shard(shard))
    assert_error(error, shard, "sample 1 (key '000001')", "bad JSON in member '000001.json'")
    bad = BadRecords(skip_bad=True)
    keys = [s["__key__"] for s in webdataset.iter_shard(shard, bad, image_root=tmp_path)]
    assert keys == ["000000", "000003", "000004"]
    reasons = [(e.record, e.reason.split(":")[0]) for e in bad.errors]
    assert reasons == [
        ("sample 1 (key '000001')", "bad JSON in member '000001.json'"),
        ("sample 2 (key '000002')", "corrupt image member '000002.jpg'"),
        ("sample 5 (key '000003')", "members not adjacent"),
    ]
    # Image decoding is opt-in: without image_root the corrupt jpg is only bytes.
    assert "000002" in [s["__key__"] for s in webdataset.iter_shard(shard, BadRecords(skip_bad=True))]


def test_formats_register_official_file_names() -> None:
    names = {
        "glue-tsv": "SST-2/train.tsv",
        "squad-v1.1": "dev-v1.1.json",
        "convai2": "valid_self_original.txt",
        "webdataset": "train-000000.tar",
    }
    specs = {"glue-tsv": glue.SPEC, "squad-v1.1": squad.SPEC, "convai2": convai2.SPEC, "webdataset": webdataset.SPEC}
    for name, spec in specs.items():
        assert spec.name == name and spec.matches(Path(names[name]))
    assert convai2.SPEC.matches(Path("train_both_original.txt"))
    assert convai2.SPEC.matches(Path("test_none_original.txt"))
    assert not squad.SPEC.matches(Path("train-v2.0.json"))
