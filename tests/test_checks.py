"""Each stage against its trivial baseline: the warning lines of the pipeline."""

from kochat.checks import table_warnings, trained_stage_warnings


def test_a_base_model_not_below_the_unigram_baseline_is_flagged():
    assert trained_stage_warnings("base", {"eval_perplexity": 351.0, "unigram_perplexity": 1592.4}) == []
    [line] = trained_stage_warnings("base", {"eval_perplexity": 1600.0, "unigram_perplexity": 1592.4})
    assert line.startswith("warning: base:") and "1600.0" in line and "1592.4" in line


def test_sft_that_does_not_lower_its_starting_loss_is_flagged():
    assert trained_stage_warnings("sft", {"eval_loss": 4.39, "start_eval_loss": 5.9}) == []
    [line] = trained_stage_warnings("sft", {"eval_loss": 5.9, "start_eval_loss": 5.9})  # equal is no gain
    assert line.startswith("warning: sft:") and "5.900" in line
    assert trained_stage_warnings("sft", {"eval_loss": 5.9}) == []  # no baseline measured (no eval split): nothing to say


def row(stage, **values):
    return {"stage": stage, "eos_rate": 1.0, "win_rate": 0.5, "win_rate_ci_low": 0.5, "win_rate_ci_high": 0.5, "score_gain": 0.0,
            "score_gain_ci_low": 0.0, "score_gain_ci_high": 0.0, **values}


def test_table_flags_sft_answers_that_do_not_end_and_policies_whose_win_interval_holds_one_half():
    report = {"reference": "sft", "win_judged_by": "judge", "decoding": {"max_new_tokens": 48}, "stages": [
        row("base", eos_rate=0.0, win_rate=0.1, win_rate_ci_low=0.05, win_rate_ci_high=0.2),  # base is not held to either rule
        row("sft", eos_rate=0.4),
        row("ppo", win_rate=0.60, win_rate_ci_low=0.54, win_rate_ci_high=0.65, score_gain=0.2, score_gain_ci_low=0.1, score_gain_ci_high=0.3),
        row("dpo", win_rate=0.53, win_rate_ci_low=0.47, win_rate_ci_high=0.59, score_gain=0.1, score_gain_ci_low=-0.05, score_gain_ci_high=0.25),
    ]}
    assert table_warnings(report) == [
        "warning: sft: only 40% of its answers end (EOS) within 48 tokens",
        "warning: dpo: against sft by the judge (95% CIs), win rate 0.53 [0.47, 0.59] is not above ½ and score gain +0.100 "
        "[-0.050, +0.250] is not above 0: no gain that this judge can see",
    ]
    # Winning more prompts is not enough: a few large losses can outweigh many small wins.
    report["stages"] = [row("ppo", win_rate=0.60, win_rate_ci_low=0.54, win_rate_ci_high=0.65, score_gain=-0.02, score_gain_ci_low=-0.1,
                            score_gain_ci_high=0.05)]
    assert table_warnings(report) == ["warning: ppo: against sft by the judge (95% CIs), score gain -0.020 [-0.100, +0.050] is not above 0: "
                                      "no gain that this judge can see"]
