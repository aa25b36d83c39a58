"""`kochat eval decoding`: one model answers the same held-out prompts under several decoding configs.

The KoChatGPT notebook tries greedy decoding, beam search, sampling and repetition controls and
concludes that the best decoding must be found by experiment; this is that experiment, with the
stage table's columns per config. Every config goes through the one generation path
(`kochat_train.rollout.generate`), beam search and sampling alike, with the same prompts and seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from kochat_data.errors import UsageError
from kochat_data.progress import progress_bar
from kochat_eval.stages import Referees, answer_prompts, eval_prompts, prompt_set_hash, response_metrics
from kochat_train.config import seed_problems
from kochat_train.decoding_flags import NOTEBOOK_DECODINGS, decoding_problems, with_defaults
from kochat_train.relevance_scorer import BUNDLED
from kochat_train.devices import resolve_device
from kochat_train.sources import inference_dtype, load_causal_lm, load_tokenizer

@dataclass
class DecodingEvalConfig:
    model: Path
    reward_model: Path
    data: Path
    judge: Path | None = None
    decodings: dict[str, dict] = field(default_factory=lambda: dict(NOTEBOOK_DECODINGS))
    max_prompts: int = 0
    batch_size: int = 16
    max_length: int = 128
    max_new_tokens: int = 48
    seed: int = 0
    unit: str = "eojeol"
    device: str = "auto"
    relevance: str | None = BUNDLED  # the relevance referee's encoder (None: no relevance column)
    template: str | None = None  # the model's prompt template (None: the one it was trained with)
    force_template: bool = False

    def settings(self, name: str) -> dict:
        """Every decoding setting of one config: transformers' defaults, --max-new-tokens, then the config's own."""
        return with_defaults({"max_new_tokens": self.max_new_tokens, "num_return_sequences": 1, **self.decodings[name]})

    def problems(self) -> list[str]:
        found = [f"--decoding {name}: {problem}" for name, given in self.decodings.items()
                 for problem in decoding_problems({"max_new_tokens": self.max_new_tokens, **given})] + seed_problems(self.seed)
        if self.decodings and any(self.settings(name)["num_return_sequences"] != 1 for name in self.decodings):
            found.append("--decoding: num_return_sequences must be 1 here (one response per prompt and config)")
        for flag, value, least in (("--batch-size", self.batch_size, 1), ("--max-prompts", self.max_prompts, 0),
                                   ("--max-new-tokens", self.max_new_tokens, 1)):
            if value < least:
                found.append(f"{flag}: expected an integer ≥ {least}, got {value}")
        return found + ([] if self.decodings else ["no decoding config"])


@torch.no_grad()
def compare_decodings(config: DecodingEvalConfig) -> tuple[dict, list[dict]]:
    """Returns (report, generations): per-config metrics and every response with its score."""
    problems = config.problems()
    if problems:
        raise UsageError("; ".join(problems))
    device = resolve_device(config.device)
    prompts = eval_prompts(config.data, config.max_prompts)
    referees = Referees(config.reward_model, config.judge, device, config.relevance)
    tokenizer = load_tokenizer(config.model, config.template, config.force_template)
    policy = load_causal_lm(config.model, tokenizer, dtype=inference_dtype(device)).to(device).eval()
    rows: dict[str, list[dict]] = {}
    with progress_bar() as progress:
        for name in config.decodings:
            task = progress.add_task(f"decoding {name}", total=len(prompts))
            rows[name] = [{"decoding": name, **row} for row in answer_prompts(
                policy, tokenizer, prompts, config.settings(name), referees, config.batch_size, config.max_length, config.seed,
                lambda done: progress.advance(task, done))]
    report = {
        "title": "kochat decoding comparison", "model": str(config.model), "reward_model": str(config.reward_model),
        "judge": None if config.judge is None else str(config.judge), **referees.describe_relevance(),
        "prompts": len(prompts), "prompt_set_sha256": prompt_set_hash(prompts), "seed": config.seed, "unit": config.unit,
        "decodings": {name: config.settings(name) for name in config.decodings},
        "stages": [{"stage": name, "model": str(config.model), **response_metrics(rows[name], config.unit)} for name in rows],
    }
    return report, [row for config_rows in rows.values() for row in config_rows]
