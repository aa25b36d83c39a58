"""Reward-hacking alarms of online RL (PPO, GRPO): the signatures of a gamed reward, each a pure check of the
held-out answers now against the starting model's answers to the same prompts. A check returns the
warning's text, or None when it stays quiet."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from kochat_data.repetition import loop_share
from kochat_data.text import non_hangul_share
from kochat_train.stage_configs import OnlineRLConfig


@dataclass(frozen=True)
class Thresholds:
    """Where each alarm fires; the defaults are the options' of OnlineRLConfig (`--alarm-…`)."""

    length_ratio: float  # median length below 1/ratio or above ratio × the start's
    share_rise: float  # share of non-Hangul answers, or of answers with loops, up by more than this
    kl: float  # mean KL to the reference per answer (nats)
    judge_drop: float  # the judge's mean below its start by more than this while the proxy's rose

    @classmethod
    def of(cls, config: OnlineRLConfig) -> Thresholds:
        return cls(config.alarm_length_ratio, config.alarm_share_rise, config.alarm_kl, config.alarm_judge_drop)


def answer_signature(responses: Sequence[str]) -> dict[str, float]:
    """What the alarms watch in a set of answers: median length in eojeol, shares without Hangul and with loops."""
    words = [text.split() for text in responses]
    return {"eval_median_eojeol": float(statistics.median(len(w) for w in words)),
            "eval_non_hangul_share": non_hangul_share(responses), "eval_loop_share": loop_share(words)}


def length_alarm(start_median: float, median: float, ratio: float) -> str | None:
    if median < start_median / ratio:
        return f"answers collapsed: median {median:g} eojeol, below 1/{ratio:g} of the starting model's {start_median:g}"
    if median > start_median * ratio:
        return f"answers exploded: median {median:g} eojeol, above {ratio:g}× the starting model's {start_median:g}"
    return None


def share_alarm(what: str, start: float, now: float, rise: float) -> str | None:
    if now - start > rise:
        return f"{what}: {now:.0%} of the answers, up from {start:.0%} (more than +{rise:.0%})"
    return None


def kl_alarm(kl: float, bound: float) -> str | None:
    return f"KL to the reference {kl:.2f} nats per answer, above {bound:g}" if kl > bound else None


def proxy_judge_alarm(proxy_start: float, proxy: float, judge_start: float, judge: float, drop: float) -> str | None:
    if proxy > proxy_start and judge < judge_start - drop:
        return (f"the proxy rose ({proxy_start:.3f} → {proxy:.3f}) while the judge fell ({judge_start:.3f} → {judge:.3f}): "
                "the policy games the proxy")
    return None


def hacking_alarms(start: dict[str, float], now: dict[str, float], thresholds: Thresholds) -> dict[str, str]:
    """Every alarm that fires between two held-out evaluations (`answer_signature` plus eval scores and KL), by kind."""
    found = {
        "length": length_alarm(start["eval_median_eojeol"], now["eval_median_eojeol"], thresholds.length_ratio),
        "non_hangul": share_alarm("answers without Hangul", start["eval_non_hangul_share"], now["eval_non_hangul_share"],
                                  thresholds.share_rise),
        "loops": share_alarm("answers with loops", start["eval_loop_share"], now["eval_loop_share"], thresholds.share_rise),
        "kl": kl_alarm(now["eval_kl"], thresholds.kl) if "eval_kl" in now else None,
        "proxy_judge": proxy_judge_alarm(start["eval_proxy_score"], now["eval_proxy_score"], start["eval_judge_score"],
                                         now["eval_judge_score"], thresholds.judge_drop) if "eval_judge_score" in now else None,
    }
    return {kind: alarm for kind, alarm in found.items() if alarm is not None}
