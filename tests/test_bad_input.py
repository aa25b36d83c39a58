"""Wrong input to `kochat train …` and `kochat eval …`: one line naming the problem, exit 2, no traceback,
nothing written; texts longer than the model's positions are cut, never a crash."""

import json
import shutil

import pytest

from conftest import SAMPLE, TINY, make_kogpt2_shaped, write_array
from kochat_train import sources

TINY_FLAGS = ["--max-length", TINY["max_length"], "--batch-size", TINY["batch_size"], "--max-steps", 1]
PPO_FLAGS = [*TINY_FLAGS, "--mini-batch-size", 2, "--max-new-tokens", 4]


def refused(result, *needles: str) -> str:
    """The error of a refused command: exit 2, one line on stderr naming the problem."""
    code, out, err = result
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def sft_command(sample_data, tiny_base, tmp_path):
    def command(**flags):
        settings = {"data": sample_data, "model": tiny_base, "out": tmp_path / "out", **flags}
        return ["train", "sft", *[item for name, value in settings.items() for item in (f"--{name.replace('_', '-')}", value)], *TINY_FLAGS]

    return command


def test_a_raw_file_or_an_empty_directory_where_a_build_is_expected(run_cli, sft_command, sample_data, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(run_cli(*sft_command(data=SAMPLE / "kochatgpt_1_SFT.jsonl")), "is a file", "kochat data build")
    refused(run_cli(*sft_command(data=tmp_path / "empty")), "no sft dataset here")
    refused(run_cli(*sft_command(data=tmp_path / "missing")), "no such directory")
    refused(run_cli(*sft_command(data=sample_data / "sft")), "is one dataset of a build", str(sample_data))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["./runs/nope", "runs/nope", "/no/such/model", "a/b/c", "nope/"])
def test_a_mistyped_local_path_is_no_such_directory_at_once(run_cli, sft_command, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # `runs/nope` exists partly: a path, not the hub's org/name
    monkeypatch.setattr(sources, "hub_reachable", lambda: pytest.fail("a path must not reach for the hub"))
    refused(run_cli(*sft_command(model=name)), f"{name}: no such directory")
    assert not (tmp_path / "out").exists()


def test_a_hub_name_without_network_fails_fast(run_cli, sft_command, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refused(run_cli(*sft_command(model="kochat-test/no-such-model")), "kochat-test/no-such-model: cannot load", "local cache")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)  # what a dead network gives, without touching one
    refused(run_cli(*sft_command(model="kochat-test/no-such-model")), "hub cannot be reached")


@pytest.mark.parametrize("damage", ["cut", "corrupt", "missing", "not-a-model"])
def test_a_damaged_model_directory(run_cli, sft_command, tiny_base, tmp_path, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_base, model)
    weights = model / "model.safetensors"
    if damage == "cut":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "corrupt":
        weights.write_bytes(b"\x00garbage" * 64)
    elif damage == "missing":
        weights.unlink()
    else:
        model = tmp_path / "data-dir"
        model.mkdir()
        (model / "manifest.json").write_text("{}")
    message = refused(run_cli(*sft_command(model=model)), str(model))
    assert ("not a model directory" if damage == "not-a-model" else "cannot load") in message
    assert not (tmp_path / "out").exists()


def test_a_causal_lm_where_a_reward_model_is_expected(run_cli, tiny_base, sample_data, tmp_path):
    refused(run_cli("eval", "rm", "--model", tiny_base, "--data", sample_data), "not a reward model", "kochat train rm")
    refused(run_cli("eval", "stages", "--stage", f"sft={tiny_base}", "--reward-model", tiny_base, "--data", sample_data), "not a reward model")
    refused(run_cli("train", "ppo", "--data", sample_data, "--sft", tiny_base, "--rm", tiny_base, "--out", tmp_path / "ppo", *PPO_FLAGS),
            "not a reward model")
    assert not (tmp_path / "ppo").exists()


def test_models_whose_tokenizers_differ_are_scored_from_text(run_cli, tiny_rm, sample_data, tmp_path):
    # Once refused; rewards are now read from text, re-encoded with the reward model's own tokenizer.
    other = make_kogpt2_shaped(tmp_path / "other")
    code, out, err = run_cli("eval", "stages", "--stage", f"sft={other}", "--reward-model", tiny_rm, "--data", sample_data,
                             "--max-new-tokens", 4, "--max-prompts", 4, "--json")
    assert code == 0, err
    assert json.loads(out)["stages"][0]["proxy_score"] == json.loads(out)["stages"][0]["proxy_score"]  # a number, not NaN
    code, _, err = run_cli("train", "ppo", "--data", sample_data, "--sft", other, "--rm", tiny_rm, "--out", tmp_path / "ppo", *PPO_FLAGS)
    assert code == 0, err
    assert f"critic: from {other} with a new value head" in err


def test_empty_datasets_and_splits(run_cli, tiny_base, tiny_rm, tmp_path):
    tied = write_array(tmp_path / "rm.json", [{"prompt": f"질문 {n}", "completion_0": "가", "completion_1": "나", "ranking": [0, 0]}
                                              for n in range(5)])
    assert run_cli("data", "build", "--rm", tied, "--out", tmp_path / "tied")[0] == 0
    refused(run_cli("train", "rm", "--data", tmp_path / "tied", "--model", tiny_base, "--out", tmp_path / "rm", *TINY_FLAGS),
            "train split is empty", "no pairs")
    assert run_cli("data", "build", "--rm", SAMPLE / "kochatgpt_2_RM.jsonl", "--ppo", SAMPLE / "kochatgpt_3_PPO.jsonl",
                   "--eval-ratio", "0", "--out", tmp_path / "no-eval")[0] == 0
    refused(run_cli("eval", "rm", "--model", tiny_rm, "--data", tmp_path / "no-eval"), "eval split is empty", "--eval-ratio")
    refused(run_cli("eval", "stages", "--stage", f"sft={tiny_base}", "--reward-model", tiny_rm, "--data", tmp_path / "no-eval"),
            "eval split is empty")
    assert not (tmp_path / "rm").exists()


def test_a_config_file_with_wrong_types_and_unknown_fields_lists_every_problem(run_cli, tmp_path):
    config = tmp_path / "sft.json"
    config.write_text(json.dumps({"batch_size": "many", "epochs": True, "learning_rte": 1e-4, "model": "m", "data": "d"}))
    code, _, err = run_cli("train", "sft", "--config", config, "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert any("unknown field 'learning_rte'" in line for line in lines)
    assert any("'batch_size': expected an integer, got 'many'" in line for line in lines)
    assert any("'epochs': expected a number, got True" in line for line in lines)
    assert lines[-1] == f"{config}: 3 problem(s) in the config"


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--learning-rate", "nan", "'learning_rate' must be a finite number, got nan"),
    ("--epochs", "inf", "'epochs' must be a finite number, got inf"),
    ("--warmup-ratio", "1.5", "'warmup_ratio' must be in [0, 1)"),
    ("--max-grad-norm", "-1", "'max_grad_norm' > 0"),
    ("--batch-size", "0", "'batch_size' must be ≥ 1"),
])
def test_nan_or_out_of_range_numbers_on_the_command_line(run_cli, sft_command, tmp_path, flag, value, needle):
    code, _, err = run_cli(*sft_command(), flag, value)
    assert code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("command", "needle"), [
    (["eval", "stages", "--stage", "sft=X", "--reward-model", "X", "--data", "X", "--temperature", "nan"], "temperature must be a finite number > 0"),
    (["eval", "stages", "--stage", "sft=X", "--reward-model", "X", "--data", "X", "--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["eval", "stages", "--stage", "sft=X", "--reward-model", "X", "--data", "X", "--batch-size", "0"], "--batch-size"),
    (["eval", "rm", "--model", "X", "--data", "X", "--max-length", "0"], "--max-length"),
    (["train", "ppo", "--data", "X", "--sft", "X", "--rm", "X", "--out", "X", "--kl-coef", "nan"], "'kl_coef' must be a finite number"),
])
def test_eval_and_ppo_numbers_are_checked_before_any_work(run_cli, command, needle):
    code, _, err = run_cli(*command)
    assert code == 2 and needle in err and "Traceback" not in err


def test_out_that_is_a_file_and_resume_with_nothing_to_resume(run_cli, sft_command, tmp_path):
    (tmp_path / "file").write_text("x")
    refused(run_cli(*sft_command(out=tmp_path / "file")), "exists and is not a directory")
    refused(run_cli(*sft_command(out=tmp_path / "fresh"), "--resume"), "nothing to resume")
    assert (tmp_path / "file").read_text() == "x"


def test_pipeline_data_dir_missing_one_kind(run_cli, tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(SAMPLE / "kochatgpt_1_SFT.jsonl", tmp_path / "data")
    refused(run_cli("pipeline", "--data-dir", tmp_path / "data", "--out", tmp_path / "run"), "no rm, ppo file")


def test_texts_far_longer_than_the_positions_are_cut_in_every_stage_and_eval(run_cli, tmp_path):
    long = "아주 긴 문장입니다 " * 300
    write_array(tmp_path / "sft.json", [{"prompt": long + str(n), "completion": long} for n in range(12)])
    write_array(tmp_path / "rm.json", [{"prompt": long + str(n), "completion_0": long, "completion_1": "짧다", "ranking": [0, 1]} for n in range(12)])
    write_array(tmp_path / "ppo.json", [{"prompt": long + str(n)} for n in range(12)])
    data = tmp_path / "data"
    assert run_cli("data", "build", "--sft", tmp_path / "sft.json", "--rm", tmp_path / "rm.json", "--ppo", tmp_path / "ppo.json",
                   "--eval-ratio", "0.3", "--out", data)[0] == 0
    model = make_kogpt2_shaped(tmp_path / "kogpt2", positions=48)
    steps = ["--max-steps", 1, "--batch-size", 2, "--max-length", 512]  # more tokens than the model's 48 positions
    for command in (["train", "sft", "--model", model, "--out", tmp_path / "sft"],
                    ["train", "rm", "--model", tmp_path / "sft", "--out", tmp_path / "rm"],
                    ["train", "ppo", "--sft", tmp_path / "sft", "--rm", tmp_path / "rm", "--out", tmp_path / "ppo", "--mini-batch-size", 1,
                     "--max-new-tokens", 8],
                    ["eval", "rm", "--model", tmp_path / "rm"],
                    ["eval", "stages", "--stage", f"sft={tmp_path / 'sft'}", "--reward-model", tmp_path / "rm", "--max-new-tokens", 8]):
        extra = steps if command[0] == "train" else []
        code, _, err = run_cli(*command, "--data", data, *extra)
        assert code == 0, (command, err)


def test_a_reward_model_where_a_language_model_is_expected_is_refused(tiny_rm, sample_data, run_cli):
    code, _, err = run_cli("generate", "--model", tiny_rm, "안녕")
    assert code == 2 and err.strip() == f"{tiny_rm}: a reward model (GPT2ForSequenceClassification), not a language model; " \
                                         "pass a base, SFT, PPO or DPO directory"
    code, _, err = run_cli("eval", "relevance", "--model", tiny_rm, "--data", sample_data)
    assert code == 2 and "not a language model" in err
