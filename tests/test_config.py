import json
from pathlib import Path

import pytest

from kochat_train.base import BaseConfig
from kochat_train.config import ConfigError, resolve_config
from kochat_train.sft import SFTConfig


def test_flags_override_the_file_which_overrides_defaults(tmp_path):
    file = tmp_path / "sft.json"
    file.write_text(json.dumps({"data": "d", "out": "o", "model": "m", "epochs": 3, "learning_rate": 1e-4}))
    config = resolve_config(SFTConfig, file, learning_rate=2e-4)
    assert (config.epochs, config.learning_rate, config.batch_size) == (3.0, 2e-4, 16)
    assert config.data == Path("d") and config.model == "m"


def test_toml_config(tmp_path):
    file = tmp_path / "base.toml"
    file.write_text('data = "d"\nout = "o"\npreset = "tiny"\nn_layer = 3\n')
    config = resolve_config(BaseConfig, file).resolved()
    assert (config.n_layer, config.n_embd, config.vocab_size) == (3, 32, 400)


def test_every_problem_is_reported_at_once(tmp_path):
    file = tmp_path / "bad.json"
    file.write_text(json.dumps({"data": "d", "out": "o", "epochs": "many", "learnin_rate": 1, "batch_size": 2.5}))
    with pytest.raises(ConfigError) as caught:
        resolve_config(SFTConfig, file)
    lines = caught.value.lines()
    assert any("unknown field 'learnin_rate'" in line for line in lines)
    assert any("'epochs': expected a number, got 'many'" in line for line in lines)
    assert any("'batch_size': expected an integer, got 2.5" in line for line in lines)
    with pytest.raises(ConfigError) as caught:
        resolve_config(SFTConfig, data="d", out="o", batch_size=0, learning_rate=-1.0, device="tpu")
    assert len(caught.value.problems) == 4  # batch_size, learning_rate, device, model


def test_base_checks_the_architecture():
    with pytest.raises(ConfigError) as caught:
        resolve_config(BaseConfig, data="d", out="o", preset="tiny", n_embd=30, n_head=4, vocab_size=100)
    assert len(caught.value.problems) == 2


def test_cli_reports_config_problems_with_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("train", "sft", "--data", tmp_path, "--out", tmp_path / "o", "--batch-size", "0")
    assert code == 2
    assert "config: 'batch_size' must be ≥ 1, got 0" in err and "config: 'model' is required" in err


def test_cli_unreadable_config_file(run_cli, tmp_path):
    (tmp_path / "c.json").write_text("{not json")
    code, _, err = run_cli("train", "rm", "--config", tmp_path / "c.json")
    assert code == 2 and "not valid JSON" in err


@pytest.mark.parametrize("command", [["train", stage] for stage in ("base", "sft", "rm", "ppo")] + [["eval", "rm"], ["eval", "stages"], ["pipeline"]])
def test_every_command_has_help(run_cli, command):
    with pytest.raises(SystemExit) as caught:
        run_cli(*command, "--help")
    assert caught.value.code == 0
