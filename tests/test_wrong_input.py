"""Wrong input to the newer commands (config files, decoding flags, `chat`'s standard input, `--out`, the pipeline):
refused before any work with a message that names the actual problem, exit 2, never a traceback."""

import subprocess
import sys

import pytest

import kochat.pipeline
from conftest import REPO

GENERATE = ["generate", "--max-new-tokens", 4]
DECODING = ["eval", "decoding", "--max-prompts", 2, "--max-new-tokens", 4]


def refused(result, *needles: str) -> str:
    """A refusal: exit 2, no traceback, every needle in what it printed."""
    code, out, err = result
    assert code == 2 and "Traceback" not in err, (code, out, err)
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture
def no_pipeline_work(monkeypatch):
    """A pipeline that starts building has accepted its config: fail the test then, before minutes of training."""
    def started(*_, **__):
        raise AssertionError("the pipeline started although its config is wrong")

    monkeypatch.setattr(kochat.pipeline, "build", started)


@pytest.mark.parametrize(("text", "needles"), [
    (b"[1, 2]", ["top level must be an object of settings", "a list"]),
    (b'{"max_steps": null}', ["'max_steps': expected an integer, got null"]),
    (b"\xff\xfe{}", ["not UTF-8 text"]),
])
def test_a_stage_config_file_that_is_not_an_object_of_values(run_cli, tiny_base, sample_data, tmp_path, text, needles):
    (tmp_path / "config.json").write_bytes(text)
    refused(run_cli("train", "sft", "--config", tmp_path / "config.json", "--data", sample_data, "--model", tiny_base,
                    "--out", tmp_path / "out"), *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "text", "needles"), [
    ("list.json", b"[1]", ["top level must be an object of settings"]),
    ("null.json", b'{"train_sft": null}', ["[train_sft] must be a table of settings, got null"]),
    ("section.toml", b"train_sft = 3\n", ["[train_sft] must be a table of settings, got 3"]),
    ("files.toml", b"sft = 3\n", ["'sft': expected a list of paths, got 3"]),
    ("utf8.toml", b"seed = 1 # \xff\n", ["not UTF-8 text"]),
    ("later.toml", b'[train_dpo]\nbeta = "strong"\n', ["[train_dpo]", "'beta': expected a number, got 'strong'"]),
    ("range.toml", b"[train_ppo]\ntop_p = 2.0\n", ["[train_ppo]", "top_p must be in (0, 1], got 2.0"]),
    ("unknown.toml", b"[train_grpo]\ngroup_sise = 4\n", ["[train_grpo]", "unknown field 'group_sise'"]),
    ("eval.toml", b"[eval]\nmax_prompts = -1\n", ["[eval]", "--max-prompts: expected an integer ≥ 0, got -1"]),
])
def test_a_pipeline_config_is_checked_whole_before_the_first_stage(run_cli, no_pipeline_work, tmp_path, name, text, needles):
    """A value wrong for the last stage is refused before the first one runs, not after minutes of training."""
    (tmp_path / name).write_bytes(text)
    refused(run_cli("pipeline", "--config", tmp_path / name, "--out", tmp_path / "run"), *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flags", "needle"), [
    (["--do-sample", "--seed", -1], "seed must be an integer in [0, 2**32 - 1], got -1"),
    (["--do-sample", "--seed", 2 ** 40], "seed must be an integer in [0, 2**32 - 1]"),
    (["--temperature", 0.7], "temperature has no effect without do_sample"),
    (["--top-k", 5, "--top-p", 0.9], "top_k, top_p have no effect without do_sample"),
    (["--do-sample", "--num-beams", 2, "--num-return-sequences", 3], "num_return_sequences 3 needs num_beams ≥ it"),
])
def test_decoding_flags_that_cannot_work_are_refused_before_the_model_loads(run_cli, monkeypatch, flags, needle):
    refused(run_cli(*GENERATE, "--model", "/no/model/needed", *flags, "질문"), needle)


def test_an_empty_raw_prompt_and_an_empty_prompt_file_say_so(run_cli, tiny_base, tmp_path):
    refused(run_cli(*GENERATE, "--model", tiny_base, "--raw", "질문", ""), "prompt 2 is empty", "--raw")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    refused(run_cli(*GENERATE, "--model", tiny_base, "--file", tmp_path / "empty.txt"), f"{tmp_path / 'empty.txt'}: no prompt in the file")


@pytest.mark.parametrize(("spec", "needle"), [
    ("a=top_k=5,top_k=6", "top_k given twice"),
    ("a=temperature=0.5", "temperature has no effect without do_sample"),
])
def test_decoding_configs_are_checked_as_the_flags_are(run_cli, tiny_base, tiny_rm, sample_data, spec, needle):
    refused(run_cli(*DECODING, "--model", tiny_base, "--reward-model", tiny_rm, "--data", sample_data, "--decoding", spec), needle)


@pytest.mark.parametrize("command", [
    [*DECODING, "--model", "X", "--reward-model", "X", "--data", "X", "--seed", -3],
    ["eval", "stages", "--stage", "sft=X", "--reward-model", "X", "--data", "X", "--seed", -3],
    ["train", "sft", "--data", "X", "--model", "X", "--out", "X", "--seed", -3],
    ["train", "grpo", "--data", "X", "--sft", "X", "--reward", "rm=X", "--out", "X", "--seed", -3],
])
def test_a_seed_outside_the_generators_range_is_refused_by_every_command(run_cli, command):
    refused(run_cli(*command), "seed must be an integer in [0, 2**32 - 1], got -3")


def test_a_value_one_command_refuses_every_command_refuses(run_cli):
    """One check per field: `train rm` and `train dpo` refuse the same judge share with the same words, and
    `generate` and `train ppo` the same sampling settings."""
    share = "'judge_share' must be in (0, 1), got 1.5"
    refused(run_cli("train", "rm", "--data", "X", "--model", "X", "--out", "X", "--judge-share", 1.5), share)
    refused(run_cli("train", "dpo", "--data", "X", "--model", "X", "--out", "X", "--judge-share", 1.5), share)
    for flag, value, needle in (("--top-k", -1, "top_k must be ≥ 0, got -1"), ("--temperature", 0, "temperature must be a finite number > 0"),
                                ("--top-p", 0, "top_p must be in (0, 1], got 0.0")):
        refused(run_cli(*GENERATE, "--model", "X", "--do-sample", flag, value, "질문"), needle)
        refused(run_cli("train", "ppo", "--data", "X", "--sft", "X", "--rm", "X", "--out", "X", flag, value), needle)
        refused(run_cli("eval", "stages", "--stage", "sft=X", "--reward-model", "X", "--data", "X", flag, value), needle)


def test_a_judge_share_with_no_prompt_names_the_share_not_the_split(run_cli, tiny_base, sample_data, tmp_path):
    refused(run_cli("train", "rm", "--data", sample_data, "--model", tiny_base, "--out", tmp_path / "rm", "--pairs", "judge",
                    "--judge-share", 0.0001, "--max-steps", 1), "judge share 0.0001 holds none of the", "--judge-share")


@pytest.mark.parametrize("command", [
    ["pipeline"],
    ["eval", "stages", "--stage", "sft={base}", "--reward-model", "{rm}", "--data", "{data}", "--max-prompts", 2],
    [*DECODING, "--model", "{base}", "--reward-model", "{rm}", "--data", "{data}", "--decoding", "greedy=top_k=0"],
    ["train", "base", "--data", "{data}", "--preset", "tiny", "--max-steps", 1],
    ["train", "rm", "--data", "{data}", "--model", "{base}", "--max-steps", 1],
    ["train", "dpo", "--data", "{data}", "--model", "{base}", "--max-steps", 1],
    ["train", "ppo", "--data", "{data}", "--sft", "{base}", "--rm", "{rm}", "--max-steps", 1],
    ["train", "grpo", "--data", "{data}", "--sft", "{base}", "--reward", "rm={rm}", "--max-steps", 1],
    ["data", "build", "--sft", str(REPO / "data" / "sample" / "kochatgpt_1_SFT.jsonl")],
])
def test_out_naming_a_file_is_refused_by_every_command_that_writes(run_cli, no_pipeline_work, tiny_base, tiny_rm, sample_data,
                                                                    tmp_path, command):
    (tmp_path / "file").write_text("keep me", encoding="utf-8")
    filled = [str(part).format(base=tiny_base, rm=tiny_rm, data=sample_data) for part in command]
    refused(run_cli(*filled, "--out", tmp_path / "file"), f"{tmp_path / 'file'}: exists and is not a directory")
    assert (tmp_path / "file").read_text(encoding="utf-8") == "keep me"


def test_a_missing_pipeline_data_dir_is_no_such_directory(run_cli, no_pipeline_work, tmp_path):
    refused(run_cli("pipeline", "--data-dir", tmp_path / "nope", "--out", tmp_path / "run"), f"{tmp_path / 'nope'}: no such directory")


def test_chat_skips_a_line_of_standard_input_that_is_not_utf8(tiny_base):
    chat = subprocess.run([sys.executable, "-m", "kochat", "chat", "--model", str(tiny_base), "--max-new-tokens", "4"],
                          input="안녕\n".encode() + b"\xff\xfe broken\n" + "잘 가\n".encode(), capture_output=True, timeout=120)
    err = chat.stderr.decode("utf-8")
    assert chat.returncode == 0 and "Traceback" not in err, err
    assert "line 2 is not UTF-8 text: skipped" in err
    assert chat.stdout.decode("utf-8").count("<챗봇>") == 2  # both good lines answered


def test_a_pipeline_config_with_good_sections_passes_the_whole_check(tmp_path):
    """The check itself accepts what the stages accept (the sample's defaults, and a section with valid values)."""
    (tmp_path / "good.toml").write_text('[train_dpo]\nbeta = 0.2\n[eval]\nmax_prompts = 8\n', encoding="utf-8")
    config = kochat.pipeline.load_pipeline_config(tmp_path / "good.toml", out=tmp_path / "run")
    assert config.stages == {"train_dpo": {"beta": 0.2}, "eval": {"max_prompts": 8}}
    assert config.settings("train_dpo")["beta"] == 0.2
