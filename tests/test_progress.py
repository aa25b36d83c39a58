"""Progress off a terminal: plain lines now and then, so a log shows that a long step is alive."""

import subprocess
import sys

from conftest import REPO, TINY
from kochat_data.progress import clock, progress_bar


def test_off_a_terminal_each_update_prints_a_plain_line_once_the_interval_has_passed(monkeypatch, capsys):
    monkeypatch.setenv("KOCHAT_PROGRESS_SECONDS", "0")
    with progress_bar() as progress:
        task = progress.add_task("counting", total=4)
        for _ in range(4):
            progress.advance(task)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["counting: 1/4 (25%)", "counting: 2/4 (50%)", "counting: 3/4 (75%)",
                                                      "counting: 4/4 (100%)", "counting: 4/4 (100%)"]  # the last one at the end
    assert "elapsed" in lines[0]


def test_a_step_quicker_than_the_interval_prints_nothing_nor_does_a_silent_bar(monkeypatch, capsys):
    monkeypatch.setenv("KOCHAT_PROGRESS_SECONDS", "3600")
    with progress_bar() as progress:
        task = progress.add_task("counting", total=2)
        progress.advance(task, 2)
    with progress_bar(enabled=False) as progress:
        progress.advance(progress.add_task("other rank", total=2), 2)
    assert capsys.readouterr().err == ""  # a quick step: no line at all


def test_clock():
    assert [clock(s) for s in (0, 42.9, 725, 3723, None)] == ["0:00", "0:42", "12:05", "1:02:03", "?"]


def test_a_training_run_captured_to_a_file_shows_its_steps(tiny_base, sample_data, tmp_path):
    done = subprocess.run([sys.executable, "-m", "kochat", "train", "sft", "--data", str(sample_data), "--model", str(tiny_base),
                           "--out", str(tmp_path / "sft"), "--max-steps", "3", "--max-length", str(TINY["max_length"])],
                          capture_output=True, text=True, cwd=REPO, env={**__import__("os").environ, "KOCHAT_PROGRESS_SECONDS": "0"})
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stderr.splitlines() if line.startswith("train sft")]
    assert steps and steps[-1].split(": ")[1].startswith("3/3 (100%)")
