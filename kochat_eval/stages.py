"""`kochat eval stages`: every stage answers the same held-out prompts with one decoding config and seed.

The prompts are the eval split of the PPO prompts: by the build's split rule no stage ever
trained on them. Each response is scored by the proxy reward model (the one PPO optimised) and,
when given, by a judge reward model that PPO never saw: a policy that games the proxy looks best
by the proxy's own score (Gao et al. 2023), so win rates are read from the judge whenever there
is one. KL and win rates are measured against the reference stage (SFT by default).
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from kochat_data.errors import UsageError
from kochat_data.progress import progress_bar
from kochat_data.repetition import repetition_metrics, split_units
from kochat_data.schema import Kind
from kochat_data.text import non_hangul_share
from kochat_eval.judging import length_controlled_win_rate, paired_bootstrap_win_rate
from kochat_eval.metrics import bootstrap_ci
from kochat_train.config import seed_problems
from kochat_train.decoding_flags import decoding_problems
from kochat_train.devices import resolve_device
from kochat_train.relevance_scorer import BUNDLED, optional_referee
from kochat_train.reward_functions import parse_reward
from kochat_train.rewards import RewardScorer
from kochat_train.rollout import (
    decoding_config,
    generate,
    response_logits,
    response_texts,
    token_logprobs,
)
from kochat_train.sources import inference_dtype, load_causal_lm, load_tokenizer
from kochat_train.stage_data import dataset_prompts, load_stage_data
from kochat_train.template import CONFIG_FILE, Prompt, prompt_text


@dataclass
class StageEvalConfig:
    stages: dict[str, Path]
    reward_model: Path
    data: Path
    judge: Path | None = None
    reference: str = "sft"
    max_prompts: int = 0
    batch_size: int = 32
    max_length: int = 128
    decoding: dict = field(default_factory=lambda: {"max_new_tokens": 48, "top_k": 0, "top_p": 1.0, "temperature": 1.0})
    seed: int = 0
    unit: str = "eojeol"
    device: str = "auto"
    relevance: str | None = BUNDLED  # the relevance referee's encoder (None: no relevance column)

    def problems(self) -> list[str]:
        """Every out-of-range setting, named by its flag."""
        found = decoding_problems({"do_sample": True, **self.decoding}) + seed_problems(self.seed)  # the table samples
        for flag, value, least in (("--batch-size", self.batch_size, 1), ("--max-prompts", self.max_prompts, 0)):
            if value < least:
                found.append(f"{flag}: expected an integer ≥ {least}, got {value}")
        return found


class Referees:
    """The proxy reward model, the judge when given, and the relevance referee when there is one: each
    scores every response from its text (`kochat_train.rewards`), so none needs the policy's tokenizer."""

    def __init__(self, proxy: Path, judge: Path | None, device: str, relevance: str | None = BUNDLED):
        self.scorers = {"proxy": RewardScorer(proxy, device)} | ({} if judge is None else {"judge": RewardScorer(judge, device)})
        self.relevance = optional_referee(relevance, device)

    def score(self, prompts: list[Prompt], responses: list[str]) -> dict[str, list[float]]:
        """`{proxy_score: […], judge_score: […], relevance: […]}` of each response."""
        scores = {f"{name}_score": scorer.score(prompts, responses) for name, scorer in self.scorers.items()}
        if self.relevance is not None:
            scores["relevance"] = self.relevance.score(prompts, responses).tolist()
        return scores

    def describe_relevance(self) -> dict:
        """What the relevance referee is, and which reward models share its pretrained weights (started from the same encoder)."""
        if self.relevance is None:
            return {"relevance_referee": None}
        shared = [name for name, scorer in self.scorers.items() if scorer.reading is not None and scorer.reading.encoder == self.relevance.encoder]
        return {"relevance_referee": self.relevance.describe(), "relevance_shares_weights_with": shared}


def played_referees(stage_dir: Path) -> dict:
    """`{"played": ["relevance"]}` when the stage was trained with the relevance referee as a reward (`--reward relevance`)."""
    try:
        kinds = {parse_reward(spec).kind for spec in json.loads((Path(stage_dir) / CONFIG_FILE).read_text(encoding="utf-8")).get("reward") or []}
    except (OSError, ValueError, AttributeError, UsageError):
        return {}
    return {"played": ["relevance"]} if "relevance" in kinds else {}


def prompt_set_hash(prompts: list[Prompt]) -> str:
    return hashlib.sha256("\n".join(map(prompt_text, prompts)).encode("utf-8")).hexdigest()[:16]


def eval_prompts(data: Path, limit: int) -> list[Prompt]:
    prompts = dataset_prompts(load_stage_data(data, Kind.PPO, ["prompt"], "kochat eval stages")["eval"])
    if not prompts:
        raise UsageError(f"{data}: the ppo eval split is empty; nothing to evaluate on (build with --eval-ratio > 0)")
    return prompts[:limit] if limit > 0 else prompts


@torch.no_grad()
def compare_stages(config: StageEvalConfig) -> tuple[dict, list[dict]]:
    """Returns (report, generations): per-stage metrics and every response with its scores."""
    problems = config.problems()
    if problems:
        raise UsageError("; ".join(problems))
    if config.reference not in config.stages:
        raise UsageError(f"reference stage {config.reference!r} is not among --stage {', '.join(config.stages)}")
    device = resolve_device(config.device)
    dtype = inference_dtype(device)
    prompts = eval_prompts(config.data, config.max_prompts)
    referees = Referees(config.reward_model, config.judge, device, config.relevance)
    tokenizers = {name: load_tokenizer(directory) for name, directory in config.stages.items()}  # all checked before generating
    reference = load_causal_lm(config.stages[config.reference], tokenizers[config.reference], dtype=dtype).to(device).eval()
    rows: dict[str, list[dict]] = {}
    with progress_bar() as progress:
        for name, directory in config.stages.items():
            policy = load_causal_lm(directory, tokenizers[name], dtype=dtype).to(device).eval()
            task = progress.add_task(f"eval {name}", total=len(prompts))
            rows[name] = [{"stage": name, **row} for row in answer_prompts(
                policy, tokenizers[name], prompts, config.decoding, referees, config.batch_size, config.max_length, config.seed,
                lambda done: progress.advance(task, done), reference)]
    judged_by = "judge" if config.judge is not None else "proxy"
    report = {
        "prompts": len(prompts), "prompt_set_sha256": prompt_set_hash(prompts), "seed": config.seed,
        "decoding": config.decoding, "unit": config.unit, "reference": config.reference, "win_judged_by": judged_by,
        "reward_model": str(config.reward_model), "judge": None if config.judge is None else str(config.judge),
        **referees.describe_relevance(),
        "stages": [{**stage_metrics(name, str(config.stages[name]), rows[name], rows[config.reference], config.unit, judged_by),
                    **played_referees(config.stages[name])} for name in rows],
    }
    return report, [row for stage_rows in rows.values() for row in stage_rows]


@torch.no_grad()
def answer_prompts(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], decoding: dict,
                   referees: Referees, batch_size: int, max_length: int, seed: int,
                   advance: Callable[[int], None] = lambda done: None, reference: PreTrainedModel | None = None) -> list[dict]:
    """Every prompt answered under `decoding` (settings of `decoding_config`) and scored by the
    referees; with a `reference`, also the KL of each response to it. Seeded, so every model or
    decoding answering the same prompts draws the same sampling noise."""
    settings = decoding_config(tokenizer, **decoding)
    temperature = decoding.get("temperature", 1.0)
    set_seed(seed)
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        rollout = generate(policy, tokenizer, batch, max_length, settings)
        mask = rollout.response_mask.float()
        copies = len(rollout.response_ids) // len(batch)
        responses = response_texts(tokenizer, rollout)
        scores = referees.score([prompt for prompt in batch for _ in range(copies)], responses)
        ended = rollout.ended.tolist()
        if reference is not None:  # KL between the distributions the responses were sampled from (tempered alike)
            logprobs = token_logprobs(response_logits(policy, rollout, temperature), rollout.response_ids)
            ref_logprobs = token_logprobs(response_logits(reference, rollout, temperature), rollout.response_ids)
            scores["kl"] = ((logprobs - ref_logprobs) * mask).sum(dim=1).tolist()
        for i, response in enumerate(responses):
            rows.append({"prompt": prompt_text(batch[i // copies]), "response": response, **{key: values[i] for key, values in scores.items()},
                         "tokens": int(mask[i].sum()), "eos": ended[i]})
        advance(len(batch))
    return rows


def stage_metrics(name: str, directory: str, rows: list[dict], reference_rows: list[dict], unit: str, judged_by: str = "judge") -> dict:
    """The response metrics, the KL to the reference stage, and against it by the `judged_by`
    score: the win rate (paired bootstrap CI over prompts; length-controlled) and the mean gain
    in score (the CI of the per-prompt differences: paired as well)."""
    metrics = response_metrics(rows, unit)
    key = f"{judged_by}_score"
    scores, reference = [row[key] for row in rows], [row[key] for row in reference_rows]
    gains = [score - ref for score, ref in zip(scores, reference, strict=True)]
    gain_low, gain_high = bootstrap_ci(gains)
    rate, low, high = paired_bootstrap_win_rate(scores, reference)
    length_difference = [len(split_units(row["response"], unit)) - len(split_units(ref["response"], unit))
                         for row, ref in zip(rows, reference_rows, strict=True)]
    if "relevance" in rows[0]:  # the relevance referee's win rate, paired like the judge's
        relevance = paired_bootstrap_win_rate([row["relevance"] for row in rows], [row["relevance"] for row in reference_rows])
        metrics |= dict(zip(("relevance_win_rate", "relevance_win_rate_ci_low", "relevance_win_rate_ci_high"), relevance, strict=True))
    return {"stage": name, "model": directory, **metrics, "score_gain": statistics.fmean(gains), "score_gain_ci_low": gain_low,
            "score_gain_ci_high": gain_high, "win_rate": rate, "win_rate_ci_low": low, "win_rate_ci_high": high,
            "lc_win_rate": length_controlled_win_rate(scores, reference, length_difference),
            "kl": statistics.fmean(row["kl"] for row in rows)}


def response_metrics(rows: list[dict], unit: str) -> dict:
    """Score means with bootstrap CIs (proxy, and judge and relevance when scored), length, EOS rate, non-Hangul
    share and repetition of a set of responses."""
    scores = {}
    for key in ("proxy_score", "judge_score", "relevance"):
        if key in rows[0]:
            values = [row[key] for row in rows]
            low, high = bootstrap_ci(values)
            scores |= {key: statistics.fmean(values), f"{key}_ci_low": low, f"{key}_ci_high": high}
    units = [split_units(row["response"], unit) for row in rows]
    lengths = [len(u) for u in units]
    return {
        **scores,
        "length_mean": statistics.fmean(lengths), "length_median": statistics.median(lengths),
        "eos_rate": statistics.fmean(float(row["eos"]) for row in rows),
        "non_hangul_share": non_hangul_share([row["response"] for row in rows]),
        **repetition_metrics(units),
    }


def write_generations(path: Path, generations: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in generations), encoding="utf-8")
