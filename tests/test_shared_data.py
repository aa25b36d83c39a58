"""Real-data builds of ../shared/data (KOCHAT_SHARED_DATA); skipped when it is absent."""

import json

import datasets
import pytest

pytestmark = pytest.mark.shared_data


def test_build_of_the_shared_files(shared_data, tmp_path, run_cli):
    out = tmp_path / "built"
    code, _, err = run_cli(
        "data", "build",
        "--sft", shared_data / "derived" / "kochat_1_SFT_chatbot.jsonl",
        "--sft", shared_data / "kochatgpt" / "kochatgpt_1_SFT_conversation.jsonl",
        "--rm", shared_data / "derived" / "kochat_2_RM_chatbot.jsonl",
        "--ppo", shared_data / "kochatgpt" / "kochatgpt_3_PPO.jsonl",
        "--on-invalid", "skip", "--out", out,
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    for entry in manifest["inputs"]:
        assert entry["records"] == entry["kept"] + entry["rejected"] + entry["duplicates"]
    assert [entry["records"] for entry in manifest["inputs"]] == [11823, 1756, 10000, 12000]
    assert manifest["rm"]["pairs"] == {"possible": 30000, "ties": 0, "written": 30000}
    assert manifest["ppo"]["rejected"] == 3  # three empty prompts in the real PPO file
    rejects = (out / "rejects.jsonl").read_text("utf-8").splitlines()
    assert all("expected non-empty text" in json.loads(line)["reason"] for line in rejects) and len(rejects) == 3
    eval_prompts = set().union(*(datasets.load_from_disk(str(out / k))["eval"]["prompt_id"] for k in ("sft", "rm", "ppo")))
    train_prompts = set().union(*(datasets.load_from_disk(str(out / k))["train"]["prompt_id"] for k in ("sft", "rm", "ppo")))
    assert eval_prompts and not eval_prompts & train_prompts

    code, stdout, _ = run_cli("data", "stats", "--json", out)
    assert json.loads(stdout)["sources"][0]["train_eval_prompt_overlap"] == 0


def test_real_ppo_prompts_stats_find_duplicates_empties_and_leaks(shared_data, run_cli):
    code, stdout, _ = run_cli("data", "stats", "--json", shared_data / "kochatgpt" / "kochatgpt_3_PPO.jsonl")
    report = json.loads(stdout)["sources"][0]
    assert code == 0
    assert report["records"] == 12000 and report["rejects"] == 3
    assert report["duplicates"]["folded"] >= report["duplicates"]["exact"] > 0
    assert report["texts"]["prompt"]["serialised"] > 0


def test_conversation_file_reads_as_sft(shared_data, run_cli):
    code, stdout, _ = run_cli("data", "validate", "--json", shared_data / "kochatgpt" / "kochatgpt_1_SFT_conversation.jsonl")
    report = json.loads(stdout)[0]
    assert code == 0
    assert (report["kind"], report["format"], report["records"], report["invalid"]) == ("sft", "conversation", 1756, 0)


def test_odd_file_is_rejected_as_rm_with_a_clear_message(shared_data, tmp_path, run_cli):
    odd = shared_data / "odd" / "qwawa_sft_completions_no_ranking.json"
    code, _, err = run_cli("data", "build", "--rm", odd, "--out", tmp_path / "out")
    lines = err.splitlines()
    assert code == 1 and not (tmp_path / "out").exists()
    assert f"{odd}:2: record 1: field 'ranking': missing (expected 3 ints, the rank of each completion, 0 = best)" in lines
    assert lines[-2] == f"{odd}: 376 of 376 rm records invalid ('ranking' ×376, 'completion_1' ×155)"
    assert lines[-1].startswith("build refused: nothing written; --on-invalid skip builds from the valid records")
