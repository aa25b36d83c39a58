"""Each stage against the trivial baseline it must beat: one warning line where it does not.

A user must never read a table of untrained models without being told. The base must predict
held-out text better than token frequencies; SFT must lower the held-out answer loss below where
its starting model stood, and its answers must end; each reward model must beat every rule that
needs no model (`kochat_eval.cli.shortcut_warnings`); PPO and DPO must win against SFT by the
judge with a confidence interval above ½; an online RL stage (PPO, GRPO) passes on the reward-hacking alarms
that fired while it trained.
"""

from __future__ import annotations

from typing import Any

# Below this share of answers that end with EOS, SFT has not learned where an answer stops.
MIN_EOS_RATE = 0.5


def trained_stage_warnings(stage: str, metrics: dict[str, Any]) -> list[str]:
    """Warnings from a stage's own final metrics (kochat_stage.json)."""
    if "alarms" in metrics:
        return list(metrics["alarms"])
    if stage == "base" and "eval_perplexity" in metrics and not metrics["eval_perplexity"] < metrics["unigram_perplexity"]:
        return [f"warning: base: held-out perplexity {metrics['eval_perplexity']:.1f} is not below the unigram baseline "
                f"{metrics['unigram_perplexity']:.1f} (token frequencies alone): the base model has not learned; train it longer"]
    if stage == "sft" and "start_eval_loss" in metrics and not metrics["eval_loss"] < metrics["start_eval_loss"]:
        return [f"warning: sft: held-out answer loss {metrics['eval_loss']:.3f} is not below the starting model's "
                f"{metrics['start_eval_loss']:.3f}: fine-tuning taught it nothing"]
    return []


def table_warnings(report: dict[str, Any]) -> list[str]:
    """Warnings from the stage comparison: SFT answers that do not end, policies that do not beat SFT."""
    found = []
    for row in report["stages"]:
        if row["stage"] == "sft" and row["eos_rate"] < MIN_EOS_RATE:
            found.append(f"warning: sft: only {row['eos_rate']:.0%} of its answers end (EOS) within "
                         f"{report['decoding']['max_new_tokens']} tokens")
        if row["stage"] in ("ppo", "grpo", "rloo", "dpo") and row.get("win_rate_ci_low") is not None:
            claims = {f"win rate {row['win_rate']:.2f} [{row['win_rate_ci_low']:.2f}, {row['win_rate_ci_high']:.2f}] is not above ½":
                      row["win_rate_ci_low"] > 0.5,
                      f"score gain {row['score_gain']:+.3f} [{row['score_gain_ci_low']:+.3f}, {row['score_gain_ci_high']:+.3f}] "
                      "is not above 0": row["score_gain_ci_low"] > 0}
            unseen = [claim for claim, shown in claims.items() if not shown]
            if unseen:
                found.append(f"warning: {row['stage']}: against {report['reference']} by the {report['win_judged_by']} (95% CIs), "
                             f"{' and '.join(unseen)}: no gain that this judge can see")
    return found
