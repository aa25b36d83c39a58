"""--report-to: the Trainer stages and PPO's own loop log through one tracker beside metrics.jsonl."""

import json

import pytest

from conftest import TINY
from kochat_train.config import ConfigError, resolve_config
from kochat_train.ppo import PPOConfig, train_ppo
from kochat_train.sft import SFTConfig, train_sft
from kochat_train.tracking import sample_rows

pytest.importorskip("tensorboard", reason="the test extra installs tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def events(out) -> EventAccumulator:
    [directory] = {path.parent for path in (out / "tensorboard").rglob("events.out.tfevents.*")}
    return EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0}).Reload()


def test_a_trainer_stage_writes_its_metrics_to_tensorboard(tiny_base, sample_data, tmp_path):
    train_sft(SFTConfig(data=sample_data, out=tmp_path / "sft", model=str(tiny_base), max_steps=3, report_to="tensorboard", **TINY))
    logged = events(tmp_path / "sft")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [event.step for event in logged.Scalars("sft/loss")] == [1, 2, 3]
    assert [event.value for event in logged.Scalars("sft/loss")] == pytest.approx(losses)  # the same numbers as metrics.jsonl
    assert "sft/eval_loss" in logged.Tags()["scalars"]


def test_ppo_logs_its_steps_and_a_table_of_sample_answers(tiny_base, tiny_rm, sample_data, tmp_path):
    train_ppo(PPOConfig(data=sample_data, out=tmp_path / "ppo", sft=str(tiny_base), rm=str(tiny_rm), max_steps=2, batch_size=4,
                        mini_batch_size=2, max_new_tokens=8, max_length=64, logging_steps=1, report_to="tensorboard"))
    logged = events(tmp_path / "ppo")
    assert [event.step for event in logged.Scalars("ppo/rm_score")] == [1, 2]
    assert len(logged.Tensors("ppo/samples/text_summary")) == 2  # one table per logging step
    table = logged.Tensors("ppo/samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert table.startswith("| prompt | response | score |")


def test_an_unknown_tracker_is_refused_with_the_config():
    with pytest.raises(ConfigError) as refused:
        resolve_config(SFTConfig, None, data="d", out="o", model="m", report_to="mlflow")
    assert refused.value.problems == ["'report_to' must be one of none, tensorboard, wandb, got 'mlflow'"]


def test_sample_rows_keeps_the_first_few():
    rows = sample_rows(["q1", "q2", "q3"], ["a1", "a2", "a3"], [0.5, 1.0, -1.0], count=2)
    assert rows == [{"prompt": "q1", "response": "a1", "score": 0.5}, {"prompt": "q2", "response": "a2", "score": 1.0}]


def test_wandb_offline_gets_the_same_run(tiny_base, sample_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is an optional extra, not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train_sft(SFTConfig(data=sample_data, out=tmp_path / "sft", model=str(tiny_base), max_steps=2, report_to="wandb", **TINY))
    [run] = (tmp_path / "sft" / "wandb").glob("offline-run-*")
    assert list(run.glob("*.wandb"))  # the run's log, ready for `wandb sync`
