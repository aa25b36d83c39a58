import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, SAMPLE, write_array, write_lines


def test_validate_reports_every_problem_and_exits_1(tmp_path, run_cli):
    path = write_lines(tmp_path / "rm.jsonl", [
        {"prompt": "a", "completion_0": "x", "completion_1": "y", "ranking": [0, 1]},
        {"prompt": "b", "completion_0": "x", "completion_1": "y", "completion_2": "z", "ranking": [0, 1]},
        {"prompt": 5, "completion_0": "x", "completion_1": "y", "ranking": [1, 0]},
    ])
    code, out, err = run_cli("data", "validate", path)
    assert code == 1
    assert err.splitlines() == [
        f"{path}:2: record 2: field 'ranking': expected 3 ints, got 2",
        f"{path}:3: record 3: field 'prompt': expected text, got int 5",
    ]
    assert "2 invalid" in out


def test_validate_json_and_kind_flag(tmp_path, run_cli):
    path = write_array(tmp_path / "p.json", [{"prompt": "안녕", "completion": "네"}])
    code, out, _ = run_cli("data", "validate", "--kind", "ppo", "--json", path)
    assert code == 0
    assert json.loads(out)[0] | {"path": None} == {"path": None, "kind": "ppo", "format": "json-array", "records": 1,
                                                   "valid": 1, "invalid": 0, "problems": []}


def test_unreadable_file_exits_2_with_one_line(tmp_path, run_cli):
    path = tmp_path / "x.jsonl"
    path.write_bytes('[{"prompt": "안녕"}]'.encode("cp949"))
    code, _, err = run_cli("data", "validate", path)
    assert code == 2
    assert len(err.splitlines()) == 1 and "CP949/EUC-KR" in err


def test_user_errors_never_print_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kochat", "data", "build", "--sft", str(tmp_path / "missing.json"),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "no such file" in result.stderr


def test_usage_error_from_argparse_exits_2(run_cli, capsys):
    try:
        run_cli("data", "build", "--seed", "x")
    except SystemExit as stop:
        assert stop.code == 2


def test_build_and_stats_on_the_embedded_sample(tmp_path, run_cli):
    out = tmp_path / "built"
    code, stdout, _ = run_cli("data", "build", "--sft", SAMPLE / "kochatgpt_1_SFT.jsonl", "--rm", SAMPLE / "kochatgpt_2_RM.jsonl",
                              "--ppo", SAMPLE / "kochatgpt_3_PPO.jsonl", "--out", out)
    assert code == 0 and "prompts:" in stdout
    assert json.loads((out / "manifest.json").read_text("utf-8"))["rm"]["pairs"]["written"] == 120
    code, stdout, _ = run_cli("data", "stats", "--json", out, *sorted(SAMPLE.glob("*.jsonl")))
    report = json.loads(stdout)
    built, *files = report["sources"]
    assert built["train_eval_prompt_overlap"] == 0
    assert [f["kind"] for f in files] == ["sft", "rm", "ppo"]
    assert report["prompt_overlap"]["rm & sft"] == 25
    code, stdout, _ = run_cli("data", "stats", out)
    assert code == 0 and "train/eval prompt overlap: 0" in stdout


def test_message_lines_are_never_wrapped_off_a_terminal(tmp_path):
    deep = tmp_path / ("a-rather-long-directory-name-" * 3) / "sft.json"
    deep.parent.mkdir()
    write_array(deep, [{"prompt": "안녕", "completion": "네"}, {"prompt": "", "completion": "네"}])
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    result = subprocess.run([sys.executable, "-m", "kochat", "data", "validate", str(deep)], capture_output=True, text=True,
                            cwd=REPO, env=env)
    assert result.returncode == 1
    [summary] = result.stdout.splitlines()
    assert summary == f"invalid {deep}: 2 sft records (json-array), 1 invalid" and len(summary) > 80


def test_a_closed_pipe_ends_quietly(tmp_path):
    records = [{"prompt": f"질문 {n}", "completion": n} for n in range(5000)]  # every one invalid: > 64 KiB of JSON to print
    path = write_array(tmp_path / "sft.json", records)
    with (tmp_path / "stderr").open("wb") as errors:
        reader = subprocess.Popen([sys.executable, "-m", "kochat", "data", "validate", "--kind", "sft", "--json", str(path)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=errors)
        reader.stdout.readline()
        reader.stdout.close()  # as `| head -1` does
        reader.wait(timeout=120)
    err = (tmp_path / "stderr").read_text(encoding="utf-8")
    assert reader.returncode == 141 and "Traceback" not in err and "BrokenPipe" not in err


HELP_COMMANDS = [[], ["data", "build"], ["data", "stats"], ["train"], *(["train", stage] for stage in ("base", "sft", "rm", "ppo", "grpo", "rloo", "dpo")),
                 ["eval"], *(["eval", command] for command in ("rm", "stages", "decoding", "relevance")),
                 ["encoder"], ["encoder", "export"], ["generate"], ["chat"], ["score"], ["pipeline"]]


def test_help_of_every_command_imports_neither_torch_nor_transformers():
    probe = ("import sys\nfrom kochat.cli import main\nfor argv in {commands!r}:\n"
             "    try:\n        main([*argv, '--help'])\n    except SystemExit as done:\n        assert done.code == 0, argv\n"
             "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe.format(commands=HELP_COMMANDS)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] in ("[]", "['datasets']")  # datasets loads no torch


def test_help_says_what_is_required_and_the_defaults():
    done = subprocess.run([sys.executable, "-m", "kochat", "eval", "stages", "--help"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "COLUMNS": "200"})
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip().startswith("--")}
    assert "(required)" in lines["--data"] and "(default: 0)" in lines["--top-k"] and "(default: 0)" in lines["--seed"]
    assert "default" not in lines["--judge"]  # no default worth printing (None)


@pytest.fixture
def closed_pipe_commands(sample_data, tiny_base, tiny_rm):
    return {
        "data stats": ["data", "stats", str(sample_data), "--json"],
        "eval stages": ["eval", "stages", "--stage", f"sft={tiny_base}", "--reward-model", str(tiny_rm), "--data", str(sample_data),
                        "--max-prompts", "2", "--max-new-tokens", "4"],
        "generate": ["generate", "--model", str(tiny_base), "안녕", "--max-new-tokens", "4"],
        "score": ["score", "--model", str(tiny_rm), "--prompt", "안녕", "반가워요"],
    }


@pytest.mark.parametrize("command", ["data stats", "eval stages", "generate", "score"])
def test_a_reader_gone_before_the_first_line_ends_each_command_quietly(command, closed_pipe_commands, tmp_path):
    with (tmp_path / "stderr").open("wb") as errors:
        writer = subprocess.Popen([sys.executable, "-m", "kochat", *closed_pipe_commands[command]], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=errors)
        writer.stdout.close()  # as `| head -0` does: every write fails
        writer.wait(timeout=300)
    err = (tmp_path / "stderr").read_text(encoding="utf-8")
    assert writer.returncode in (0, 141) and "Traceback" not in err and "BrokenPipe" not in err, err[-2000:]
