"""Ctrl-C (SIGINT) and SIGTERM while a stage trains: it stops after the step it is in with a checkpoint there, exit
130, one line that says how to go on; that command goes on from the checkpoint."""

import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kochat.cli import resume_command
from tests.conftest import TINY
from tests.test_fault_tolerance import flag_args, signal_when


def stop_when(child: subprocess.Popen, ready, number: int) -> tuple[int, str]:
    """Send `number` to `child` once `ready()` holds; returns its exit code and the last line of its stderr."""
    signal_when(child, ready, number, poll=0.01)
    _, err = child.communicate(timeout=120)
    lines = err.decode("utf-8").strip().splitlines()
    assert "Traceback" not in err.decode("utf-8"), err.decode("utf-8")[-3000:]
    return child.returncode, lines[-1]


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kochat", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def steps_logged(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text("utf-8").splitlines() if line.strip()] if path.exists() else []


def go_on(hint: str, *more) -> subprocess.CompletedProcess:
    """Run the command an interrupted run printed (`… to go on: kochat …`), with `more` flags after it."""
    command = shlex.split(hint.split("to go on: ", 1)[1])
    assert command[0] == "kochat"
    return subprocess.run([sys.executable, "-m", "kochat", *command[1:], *map(str, more)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("stage", "number"), [("sft", signal.SIGTERM), ("grpo", signal.SIGINT)])
def test_a_signal_stops_a_stage_after_its_step_with_a_checkpoint_to_go_on_from(stage, number, tiny_base, tiny_rm, sample_data, tmp_path):
    out = tmp_path / stage
    inputs = {"model": tiny_base} if stage == "sft" else {"sft": tiny_base, "reward": f"rm={tiny_rm}", "group_size": 2,
                                                          "max_new_tokens": 4}
    settings = {"data": sample_data, "out": out, **inputs, **TINY, "max_steps": 5000, "save_steps": 100000}
    code, line = stop_when(start("train", stage, *flag_args(settings)), lambda: len(steps_logged(out)) >= 3, number)
    stopped = steps_logged(out)[-1]
    assert code == 130, line
    assert line.startswith(f"{stage}: stopped after step ") and "to go on: kochat train" in line and line.endswith("--resume"), line
    at = int(line.split("stopped after step ")[1].split(",")[0])
    assert at >= stopped and (out / "checkpoints" / f"checkpoint-{at}").is_dir()
    assert not (out / "kochat_stage.json").exists()
    done = go_on(line, "--max-steps", at + 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert steps_logged(out)[-1] == at + 2 and (out / "kochat_stage.json").is_file()


def test_an_interrupted_pipeline_stage_goes_on_from_its_checkpoint(tiny_base, tmp_path):
    out = tmp_path / "run"
    code, line = stop_when(start("pipeline", "--model", tiny_base, "--stages", "sft", "--out", out),
                             lambda: (out / "sft" / "kochat_config.json").exists(), signal.SIGINT)
    assert code == 130 and "sft: stopped after step" in line and line.endswith(f"to go on: kochat pipeline --model {tiny_base} "
                                                                               f"--stages sft --out {out}"), line
    again = go_on(line)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sft: resuming from" in again.stderr and (out / "sft" / "kochat_stage.json").is_file()


def test_the_command_that_goes_on_resumes_a_stage_and_reruns_a_pipeline():
    assert resume_command(["train", "sft", "--out", "o", "--overwrite"]) == "kochat train sft --out o --resume"
    assert resume_command(["train", "dpo", "--out", "a b", "--resume"]) == "kochat train dpo --out 'a b' --resume"
    assert resume_command(["pipeline", "--out", "o"]) == "kochat pipeline --out o"


def test_a_command_run_in_process_gives_the_signal_handlers_back(run_cli):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert run_cli("train", "sft", "--data", "X", "--model", "X", "--out", "X", "--seed", -1)[0] == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
