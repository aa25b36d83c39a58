"""Bring your own data and model: TRL's formats from JSON, Parquet, CSV and save_to_disk; chat-template models end to end."""

import json

import datasets
import pytest

from conftest import FIXTURES, write_lines


def test_each_fixture_format_reads_as_its_kind(run_cli):
    code, out, err = run_cli("data", "validate", "--json", "--columns", "prompt=Q,completion=A", FIXTURES / "ultrafeedback_ko.parquet",
                             FIXTURES / "messages_sft.jsonl", FIXTURES / "chatbot_qa.csv", FIXTURES / "prompts_saved")
    assert code == 0, err
    report = {row["format"]: (row["kind"], row["records"], row["invalid"]) for row in json.loads(out)}
    # 60 conversations, 15 of them two turns long: 75 answers; the CSV's quoted line break stays inside its record
    assert report == {"parquet": ("rm", 40, 0), "jsonl": ("sft", 75, 0), "csv": ("sft", 60, 0), "save_to_disk": ("ppo", 60, 0)}


def test_built_fixtures_keep_conversations_and_leave_pair_ranks_unknown(byo_data):
    sft, rm, ppo = (datasets.load_from_disk(str(byo_data / kind)) for kind in ("sft", "rm", "ppo"))
    rows = [row for split in sft.values() for row in split]
    two_turns = [row for row in rows if row["prompt_messages"] and len(json.loads(row["prompt_messages"])) >= 3
                 and json.loads(row["prompt_messages"])[-2]["role"] == "assistant"]
    assert two_turns and all(row["prompt"].startswith("<사람>: ") for row in two_turns)
    with_system = [json.loads(row["prompt_messages"]) for row in rows if row["prompt_messages"]]
    assert any(messages[0]["role"] == "system" for messages in with_system)
    assert all(not row["prompt_messages"] for row in rows if json.loads(row["extra"]).get("label") is not None)  # the CSV's
    pairs = [row for split in rm.values() for row in split]
    assert len(pairs) == 40 and all(row["chosen_rank"] is None and row["rejected_rank"] is None for row in pairs)
    assert {"score_chosen", "score_rejected", "prompt_id"} <= set(json.loads(pairs[0]["extra"]))
    prompts = [row for split in ppo.values() for row in split]
    assert sum(bool(row["prompt_messages"]) for row in prompts) == 20  # every third carries a system message


def test_stats_of_unranked_pairs_show_no_rank_table(run_cli):
    code, out, _ = run_cli("data", "stats", "--json", FIXTURES / "ultrafeedback_ko.parquet", FIXTURES / "messages_sft.jsonl")
    assert code == 0
    parquet, messages = json.loads(out)["sources"]
    assert parquet["rm"]["pairs_without_ranks"] == 40 and parquet["rm"]["best_position_share"] == {} and parquet["rm"]["pairs"] == 40
    assert messages["conversations"] == 45  # system messages (30) and second turns (15)
    code, out, _ = run_cli("data", "stats", FIXTURES / "ultrafeedback_ko.parquet")
    assert "preference pairs without ranks 40" in out and "best answer position" not in out


@pytest.mark.parametrize("record, expected", [
    ({"chosen": [{"role": "user", "content": "질문"}, {"role": "assistant", "content": "좋은 답"}],
      "rejected": [{"role": "user", "content": "질문"}, {"role": "assistant", "content": "나쁜 답"}]},
     ("질문", None, ["좋은 답", "나쁜 답"])),
    ({"chosen": "하늘은 파랗다", "rejected": "하늘은 초록이다"}, ("하늘은", None, ["파랗다", "초록이다"])),
    ({"prompt": [{"role": "system", "content": "짧게"}, {"role": "user", "content": "질문"}],
      "chosen": [{"role": "assistant", "content": "네"}], "rejected": [{"role": "assistant", "content": "아니오"}]},
     ("질문", [{"role": "system", "content": "짧게"}, {"role": "user", "content": "질문"}], ["네", "아니오"])),
])
def test_trl_preference_shapes(record, expected):
    from kochat_data.schema import Kind, check_record

    clean, problems = check_record(record, Kind.RM)
    assert problems == []
    assert (clean["prompt"], clean["prompt_messages"], clean["completions"]) == expected and clean["ranking"] is None


BAD = [
    ("parquet", [{"prompt": "질문", "chosen": "좋은 답", "rejected": ""}], "record 1: field 'rejected': expected non-empty text"),
    ("parquet", [{"chosen": [{"role": "user", "content": "질문"}, {"role": "assistant", "content": "답"}],
                  "rejected": [{"role": "user", "content": "다른 질문"}, {"role": "assistant", "content": "답"}]}],
     "record 1: field 'chosen': chosen: expected the shared conversation and one assistant message"),
    ("jsonl", [{"messages": [{"role": "user", "content": "질문"}, {"role": "bot", "content": "답"}]}],
     ":1: record 1: field 'messages': message 1: role 'bot', expected one of system, user, assistant"),
    ("jsonl", [{"messages": [{"role": "user", "content": "질문"}]}], "record 1: field 'messages': no assistant message after a user message"),
    ("csv", "prompt,completion\n질문,답\n\"여러\n줄 질문\",\n", ":3: record 2: field 'completion': expected non-empty text"),
    ("csv", "prompt,completion\n질문,답,남는 칸\n", ":2: record 1: CSV: 3 fields, the header has 2"),
    ("save_to_disk", [{"prompt": [{"role": "assistant", "content": "답"}]}], "record 1: field 'prompt': a prompt must end with a user message"),
]


def write_source(path, kind, rows):
    if kind == "csv":
        path = path.with_suffix(".csv")
        path.write_text(rows, encoding="utf-8")
    elif kind == "parquet":
        path = path.with_suffix(".parquet")
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif kind == "save_to_disk":
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    else:
        path = write_lines(path.with_suffix(".jsonl"), rows)
    return path


@pytest.mark.parametrize("kind, rows, message", BAD, ids=[f"{kind}-{n}" for n, (kind, _, _) in enumerate(BAD)])
def test_bad_input_in_each_new_format_is_one_located_line(run_cli, tmp_path, kind, rows, message):
    path = write_source(tmp_path / "bad", kind, rows)
    code, _, err = run_cli("data", "validate", path)
    assert code == 1 and message in err and "Traceback" not in err
    assert any(line.startswith(str(path)) and message in line for line in err.splitlines())


def test_unreadable_sources_are_usage_errors(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    (tmp_path / "empty_dir").mkdir()
    for args, message in [
        ([broken], "not a readable Parquet file"),
        ([tmp_path / "empty_dir"], "expected a data file or a `datasets.save_to_disk` directory"),
        (["maywell/ko_Ultrafeedback_binarized"], "the hub cannot be reached"),
        (["--columns", "prompt=Q,completion=Answer", FIXTURES / "chatbot_qa.csv"], "--columns names Answer, which the data lacks"),
        (["--columns", "prompt", FIXTURES / "chatbot_qa.csv"], "--columns: expected FIELD=COLUMN"),
        ([tmp_path / "typo.jsnl"], "no such file"),
    ]:
        code, _, err = run_cli("data", "validate", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_chatbotdata_csv_builds_with_its_own_columns(run_cli, shared_data, tmp_path):
    csv_path = shared_data / "chatbot" / "ChatbotData.csv"
    code, _, err = run_cli("data", "build", "--sft", csv_path, "--columns", "prompt=Q,completion=A", "--out", tmp_path / "built")
    assert code == 0, err
    manifest = json.loads((tmp_path / "built" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["inputs"][0]["format"] == "csv" and manifest["inputs"][0]["records"] == 11823
    assert manifest["sft"]["kept"] + manifest["sft"]["duplicates"] + manifest["sft"]["rejected"] == 11823
