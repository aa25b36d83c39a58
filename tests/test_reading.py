import json
import re

import pytest

from kochat_data.errors import InvalidDataError, UsageError
from kochat_data.reading import FileFormat, read_records
from kochat_data.schema import Kind
from kochat_data.validate import validate_file
from tests.conftest import write_array


def records_of(path):
    file_format, _, records = read_records(path)
    return file_format, list(records)


def test_json_array_records_carry_their_start_lines(tmp_path):
    path = write_array(tmp_path / "a.jsonl", [{"prompt": "하나"}, {"prompt": "둘"}, {"prompt": "셋"}])
    file_format, records = records_of(path)
    assert file_format is FileFormat.JSON_ARRAY
    # indent 4: '[' on line 1, each object spans 3 lines
    assert [(r.index, r.line) for r in records] == [(1, 2), (2, 5), (3, 8)]
    assert records[1].data == {"prompt": "둘"}


def test_json_lines_with_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes('{"prompt": "가"}\r\n\r\n{"prompt": "나\\r\\n다"}\r\n'.encode())
    file_format, records = records_of(path)
    assert file_format is FileFormat.JSON_LINES
    assert [(r.index, r.line) for r in records] == [(1, 1), (2, 3)]
    assert validate_file(path).records[1]["prompt"] == "나\n다"


def test_bom_is_stripped_and_text_is_nfc(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"prompt": "\u1112\u1161\u11ab", "completion": "네"}], ensure_ascii=False), encoding="utf-8-sig")
    validated = validate_file(path)
    assert validated.records[0]["prompt"] == "한"


def test_broken_array_reports_line_of_the_syntax_error(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n {"prompt": "a"},\n {"prompt": "b",,}\n]', encoding="utf-8")
    _, records = records_of(path)
    assert records[0].data == {"prompt": "a"}
    assert records[1].error.startswith("invalid JSON") and records[1].line == 3


def test_malformed_json_line_is_one_record_problem(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": \n{"prompt": "c"}\n', encoding="utf-8")
    validated = validate_file(path)
    assert len(validated.records) == 2
    assert str(validated.problems[0]).startswith(f"{path}:2: record 2: invalid JSON")


def test_conversation_file_gives_one_sft_record_per_bot_turn(tmp_path):
    path = tmp_path / "conv.jsonl"
    path.write_text(
        "<<start conversation>>\n<사람>: 안녕?\n<챗봇>: 안녕하세요!\n<사람>: 날씨 어때?\n<챗봇>: 맑아요.\n"
        "둘째 줄이에요.\n\n<<start conversation>>\n<챗봇>: 먼저 말해요.\n",
        encoding="utf-8",
    )
    validated = validate_file(path)
    assert validated.file_format is FileFormat.CONVERSATION
    assert [(r["prompt"], r["completion"], r["line"]) for r in validated.records] == [
        ("안녕?", "안녕하세요!", 3),
        ("<사람>: 안녕?\n<챗봇>: 안녕하세요!\n<사람>: 날씨 어때?", "맑아요.\n둘째 줄이에요.", 5),
    ]
    assert "before any <사람> turn" in str(validated.problems[0]) and validated.problems[0].line == 9


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("Q,A,label\n안녕,반가워,0\n".encode(), "looks like CSV"),
        (json.dumps({"data": [{"prompt": "a"}]}, indent=2).encode(), "one top-level JSON object (keys: data)"),
        (b"   \n", "empty file"),
        (b"hello there", "not JSON"),
        ('[{"prompt": "안녕"}]'.encode("cp949"), "looks like CP949/EUC-KR"),
        (b"\xff\xfe[\x00", "UTF-16"),
    ],
)
def test_unreadable_files_are_usage_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=re.escape(message)):
        validate_file(path)


def test_missing_file_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        validate_file(tmp_path / "nope.jsonl")


FOUR_RECORDS_RAW_TAB = (
    '[\n  {"prompt": "하나", "completion": "일"},\n  {"prompt": "둘\tx", "completion": "이"},\n'
    '  {"prompt": "셋", "completion": "삼"},\n  {"prompt": "넷", "completion": "사"}\n]\n'
)


def test_a_broken_record_in_an_array_is_skipped_and_reading_goes_on(tmp_path, run_cli):
    path = tmp_path / "sft.json"
    path.write_text(FOUR_RECORDS_RAW_TAB, encoding="utf-8")
    validated = validate_file(path)
    assert validated.total == 4 and [r["prompt"] for r in validated.records] == ["하나", "셋", "넷"]
    assert [(p.line, p.record) for p in validated.problems] == [(3, 2)]
    assert "Invalid control character" in str(validated.problems[0]) and "lines 3–3" in str(validated.problems[0])

    code, _, _ = run_cli("data", "build", "--sft", path, "--out", tmp_path / "out", "--on-invalid", "skip")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert code == 0 and (manifest["sft"]["records"], manifest["sft"]["kept"], manifest["sft"]["rejected"]) == (4, 3, 1)


@pytest.mark.parametrize("newlines", [True, False])
def test_each_broken_record_counts_once_also_on_one_line(tmp_path, newlines):
    records = ['{"prompt": "a", "completion": "b"}', '{"prompt": "c", "completion": }', '{"prompt": "d\te", "completion": "f"}',
               '{"prompt": "g", "completion": "h"} {"prompt": "i", "completion": "j"}', '{"prompt": "k", "completion": "l"}']
    path = tmp_path / "sft.json"
    path.write_text("[" + (",\n" if newlines else ",").join(records) + "]", encoding="utf-8")
    validated = validate_file(path)
    assert validated.total == 6
    assert [r["prompt"] for r in validated.records] == ["a", "g", "k"]
    assert [p.record for p in validated.problems] == [2, 3, 5]
    assert "expected ',' or ']' after record 4" in str(validated.problems[2])


def test_a_broken_first_record_reports_its_syntax_error_not_the_kind(tmp_path):
    path = tmp_path / "sft.json"
    path.write_text('[\n  {"prompt": "a", "completion": },\n  {"prompt": "b", "completion": "c"}\n]', encoding="utf-8")
    validated = validate_file(path)
    assert validated.kind.value == "sft" and validated.total == 2
    assert str(validated.problems[0]).startswith(f"{path}:2: record 1: invalid JSON: Expecting value")

    path.write_text('[\n  {"prompt": "a", "completion": }\n]', encoding="utf-8")
    with pytest.raises(InvalidDataError) as raised:
        validate_file(path)
    assert raised.value.lines()[0].startswith(f"{path}:2: record 1: invalid JSON: Expecting value")
    assert "got no readable record" in raised.value.lines()[1]


def test_an_array_cut_short_names_the_line_from_which_nothing_was_read(tmp_path):
    path = tmp_path / "sft.json"
    path.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "c", "compl', encoding="utf-8")
    with pytest.raises(UsageError, match=r"sft.json:3: invalid JSON: Unterminated string .* nothing from line 3 on was read"):
        validate_file(path, Kind.SFT)
