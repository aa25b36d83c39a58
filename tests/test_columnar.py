"""The whole-file columnar path: it accepts only clean files, and builds exactly what the located path builds."""

import json
import unicodedata
from pathlib import Path

import pytest

import kochat_data.validate
from kochat_data.build import BuildConfig, build
from kochat_data.columnar import read_clean_frame
from kochat_data.errors import UsageError
from kochat_data.reading import FileFormat
from kochat_data.schema import Kind
from tests.conftest import write_array, write_lines
from tests.test_build import tree_digest


def rm_record(n: int, **changes) -> dict:
    return {"prompt": f"질문 {n}", "completion_0": "좋은 답", "completion_1": "나쁜 답", "completion_2": "보통 답",
            "ranking": [0, 2, 1], **changes}


def frame_of(path: Path, kind: Kind = Kind.RM, file_format: FileFormat = FileFormat.JSON_ARRAY):
    return read_clean_frame(path.read_bytes(), file_format, kind)


# Text that needs care: decomposed Hangul (NFD), a combining accent, an em quad (NFC maps it to an
# em space), CRLF line ends, and whitespace runs that only fold() equates.
TRICKY = [
    unicodedata.normalize("NFD", "한국어 질문"), "cafe\u0301 메뉴", "em\u2001quad", "줄\r\n바꿈", "  공백   많은\t질문 ",
    "보통 질문", "보통  질문",  # the second is a duplicate of the first once folded
]


def tricky_rm(tmp_path: Path) -> Path:
    records = [rm_record(0, prompt=text, completion_1=f"답 {text}") for text in TRICKY]
    return write_array(tmp_path / "rm.jsonl", records + [rm_record(1, completion_0="좋은\r\n답"), rm_record(1)])


def test_a_clean_file_is_read_with_normalised_texts(tmp_path):
    frame = frame_of(tricky_rm(tmp_path))
    assert frame.columns == ["prompt", "completions", "ranking", "extra", "prompt_messages"]
    assert frame.get_column("prompt").to_list()[:4] == ["한국어 질문", "café 메뉴", "em\u2003quad", "줄\n바꿈"]
    assert frame.row(7) == ("질문 1", ["좋은\n답", "나쁜 답", "보통 답"], [0, 2, 1], "{}", "")


@pytest.mark.parametrize("kind, make", [
    (Kind.SFT, lambda tmp: write_array(tmp / "sft.jsonl", [{"prompt": f"질문 {n}", "completion": "답\u2001"} for n in range(3)])),
    (Kind.PPO, lambda tmp: write_array(tmp / "ppo.jsonl", [{"prompt": text} for text in TRICKY])),
    (Kind.RM, tricky_rm),
])
def test_columnar_and_located_builds_are_byte_identical(tmp_path, monkeypatch, kind, make):
    source = make(tmp_path)
    assert frame_of(source, kind) is not None  # the columnar path really is taken
    config = {"seed": 3, "eval_ratio": 0.3, kind.value: [source]}
    build(BuildConfig(out=tmp_path / "columnar", **config))
    monkeypatch.setattr(kochat_data.validate, "read_clean_frame", lambda *args: None)
    build(BuildConfig(out=tmp_path / "located", **config))
    assert tree_digest(tmp_path / "columnar") == tree_digest(tmp_path / "located")
    manifest = json.loads((tmp_path / "columnar" / "manifest.json").read_text("utf-8"))
    # "보통 질문" twice, whitespace aside; in RM also "좋은\r\n답" against "좋은 답"
    assert manifest[kind.value]["duplicates"] == {Kind.SFT: 0, Kind.PPO: 1, Kind.RM: 2}[kind]


@pytest.mark.parametrize("record", [
    rm_record(5, prompt=7),                         # polars would read it as the text "7"
    rm_record(5, prompt=True),
    rm_record(5, ranking=[0, True, 1]),             # polars would read it as rank 1
    rm_record(5, ranking=[0, 1.0, 2]),
    rm_record(5, ranking=[0, 1]),
    rm_record(5, ranking=[0, -1, 1]),
    rm_record(5, ranking=[0, None, 1]),
    rm_record(5, prompt=None),
    rm_record(5, prompt="  \x1c "),                 # blank to Python, not to Rust's \s
    rm_record(5, completion_2=["목록"]),
    rm_record(5, source="extra field"),             # would be dropped, not kept in `extra`
    {"prompt": "질문", "completion_0": "a", "completion_1": "b", "ranking": [0, 1]},  # another k
    "not an object",
])
def test_anything_unusual_is_left_to_the_located_path(tmp_path, record):
    records = [rm_record(n) for n in range(150)] + [record]  # past polars' default schema window
    assert frame_of(write_array(tmp_path / "rm.jsonl", records)) is None


def test_raw_text_guards(tmp_path):
    duplicate_key = tmp_path / "dup.jsonl"
    duplicate_key.write_text('[{"prompt": "a", "prompt": "b"}]', "utf-8")
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('[{"prompt": "a\\ud800"}]', "utf-8")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('[{"prompt": "a"}, ]', "utf-8")
    for path in (duplicate_key, surrogate, broken):
        assert frame_of(path, Kind.PPO) is None
    lines = write_lines(tmp_path / "ppo.jsonl", [{"prompt": "가"}, {"prompt": "나"}])
    assert frame_of(lines, Kind.PPO, FileFormat.JSON_LINES).get_column("prompt").to_list() == ["가", "나"]


def test_a_file_left_to_the_located_path_still_reports_its_problems(tmp_path):
    records = [rm_record(n) for n in range(3)] + [rm_record(9, ranking=[0, True, 1])]
    result = kochat_data.validate.validate_file(write_array(tmp_path / "rm.jsonl", records), Kind.RM, columnar=True)
    assert [(problem.record, problem.field) for problem in result.problems] == [(4, "ranking")]
    assert len(result.records) == 3


def test_a_file_whose_head_cuts_a_character_still_takes_the_columnar_path(tmp_path):
    # Hangul is 3 bytes in UTF-8: one of three shifts puts the 4096-byte head's end inside a character.
    for shift in range(3):
        records = [rm_record(0, prompt="a" * shift + "가" * 2000)] + [rm_record(n) for n in range(1, 60)]  # byte 4096 is in the Hangul
        result = kochat_data.validate.validate_file(write_array(tmp_path / f"rm{shift}.jsonl", records), Kind.RM, columnar=True)
        assert result.frame is not None and result.total == 60


def test_whole_file_problems_keep_their_message(tmp_path):
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_text(json.dumps([rm_record(0)], ensure_ascii=False), encoding="utf-16")
    with pytest.raises(UsageError, match="UTF-16 text"):
        kochat_data.validate.validate_file(utf16, Kind.RM, columnar=True)
