"""Runs killed with a real SIGKILL: training resumes to the same weights, a data build leaves the old output intact."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kochat_data.build import BuildConfig, build
from kochat_data.errors import UsageError
from kochat_train.outputs import last_complete_checkpoint
from kochat_train.ppo import PPOConfig, train_ppo
from kochat_train.sft import SFTConfig, train_sft
from tests.conftest import TINY, write_array
from tests.test_build import tree_digest
from tests.test_distributed import weights


def start_kochat(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kochat", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def signal_when(child: subprocess.Popen, ready, number: int, timeout: float = 120, poll: float = 0.002) -> None:
    """Send signal `number` to `child` as soon as `ready()` holds; fail if it ends first (it was not stopped mid-run)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if child.poll() is not None:
            pytest.fail(f"the run ended (exit {child.returncode}) before the signal: {child.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("timed out waiting for the moment to signal")
        time.sleep(poll)
    child.send_signal(number)


def kill_when(child: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL `child` as soon as `ready()` holds."""
    signal_when(child, ready, signal.SIGKILL, timeout)
    assert child.wait() == -signal.SIGKILL


def flag_args(settings: dict) -> list:
    return [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", value)]


def test_sft_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(tiny_base, sample_data, tmp_path):
    settings = dict(data=sample_data, model=str(tiny_base), max_steps=150, save_steps=10, **TINY)
    cut = tmp_path / "cut"
    kill_when(start_kochat("train", "sft", "--out", cut, *flag_args(settings)),
              lambda: last_complete_checkpoint(cut / "checkpoints") is not None)
    assert not (cut / "kochat_stage.json").exists()

    resumed = train_sft(SFTConfig(out=cut, resume=True, **settings))
    straight = train_sft(SFTConfig(out=tmp_path / "straight", **settings))
    first, second = weights(straight.out), weights(resumed.out)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-6)
    logged = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert logged == list(range(1, 151))  # lines past the checkpoint were dropped and logged again


def test_ppo_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(tiny_base, tiny_rm, sample_data, tmp_path):
    settings = dict(data=sample_data, sft=str(tiny_base), rm=str(tiny_rm), max_steps=30, save_steps=3, batch_size=4,
                    mini_batch_size=2, max_new_tokens=8, max_length=64, learning_rate=1e-3)
    cut = tmp_path / "cut"
    kill_when(start_kochat("train", "ppo", "--out", cut, *flag_args(settings)),
              lambda: any((cut / "checkpoints").glob("checkpoint-*/ppo_state.pt")))
    resumed = train_ppo(PPOConfig(out=cut, resume=True, **settings))
    straight = train_ppo(PPOConfig(out=tmp_path / "straight", **settings))
    first, second = weights(straight.out), weights(resumed.out)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-6)
    assert [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()] == list(range(1, 31))


def test_a_checkpoint_without_its_trainer_state_is_not_resumed_from(tmp_path):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")  # checkpoint-4 was cut mid-write
    assert last_complete_checkpoint(tmp_path / "missing") is None


def rm_records(count: int) -> list[dict]:
    return [{"prompt": f"질문 {n}번", "completion_0": f"좋은 답 {n}", "completion_1": "나쁜 답", "completion_2": "보통 답",
             "ranking": [0, 2, 1]} for n in range(count)]


def test_data_build_killed_mid_write_leaves_the_previous_output(tmp_path):
    out = tmp_path / "built"
    build(BuildConfig(out=out, rm=[write_array(tmp_path / "small.jsonl", rm_records(50))]))
    before = tree_digest(out)
    big = write_array(tmp_path / "big.jsonl", rm_records(200_000))

    child = start_kochat("data", "build", "--rm", big, "--out", out, "--overwrite")
    staging = tmp_path / f".built.partial-{child.pid}"
    kill_when(child, lambda: (staging / "rm").is_dir())  # the datasets are being written
    assert tree_digest(out) == before
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith(".")) == ["big.jsonl", "built", "small.jsonl"]

    build(BuildConfig(out=out, rm=[tmp_path / "small.jsonl"], overwrite=True))  # the next build clears the leftover
    assert not staging.exists()
    assert tree_digest(out) == before


def test_a_kill_between_the_two_renames_is_repaired_by_the_next_build(tmp_path):
    out = tmp_path / "built"
    build(BuildConfig(out=out, rm=[write_array(tmp_path / "rm.jsonl", rm_records(20))]))
    before = tree_digest(out)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    retired = tmp_path / f".built.retired-{finished.stdout.strip()}"  # the pid of a writer that is gone
    os.rename(out, retired)

    with pytest.raises(UsageError, match="not empty"):  # the previous output is back, and protected
        build(BuildConfig(out=out, rm=[tmp_path / "rm.jsonl"]))
    assert tree_digest(out) == before and not retired.exists()
