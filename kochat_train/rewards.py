"""Rewards of (prompt, response) texts, read exactly as each reward model was trained to read them.

The one scoring path of PPO, `kochat score` and every evaluation. It works on text, not on the
policy's token ids, so a reward model may have a tokenizer of its own (an encoder RM): responses
are decoded by the caller and re-encoded here, as TRL's GRPO does with its reward tokenizers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

from kochat_data.errors import UsageError
from kochat_train.devices import resolve_device
from kochat_train.rm import ScalarRewardModel
from kochat_train.sources import (
    capped_length,
    inference_dtype,
    load_reward_model,
    load_tokenizer,
)
from kochat_train.template import CONFIG_FILE, Prompt, encoder_reading, reward_inputs

DEFAULT_MAX_LENGTH = 256  # for a reward model that does not say what it was trained with


def training_max_length(model_dir: Path) -> int | None:
    """The max_length a kochat reward model was trained with (its kochat_config.json), if it says."""
    try:
        return int(json.loads((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"))["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RewardScorer:
    """A reward model ready to score texts as it was trained to read them (`reward_inputs`), cut to
    the length it was trained with (never past its positions)."""

    def __init__(self, model_dir: Path, device: str = "auto", max_length: int | None = None, template: str | None = None,
                 force_template: bool = False):
        if max_length is not None and max_length < 1:
            raise UsageError(f"--max-length: expected an integer ≥ 1, got {max_length}")
        self.device = resolve_device(device)
        self.tokenizer = load_tokenizer(model_dir, template, force_template)  # by default, the template it was trained with
        self.model = ScalarRewardModel(load_reward_model(model_dir, self.tokenizer, dtype=inference_dtype(self.device))).to(self.device).eval()
        self.max_length = capped_length(max_length or training_max_length(model_dir) or DEFAULT_MAX_LENGTH, self.model.model)
        self.reading = encoder_reading(model_dir) if self.model.reads_pairs else None
        self.pad = DataCollatorWithPadding(self.tokenizer)

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        if batch_size < 1:
            raise UsageError(f"--batch-size: expected an integer ≥ 1, got {batch_size}")
        examples = reward_inputs(self.tokenizer, list(prompts), list(responses), self.max_length, self.reading)
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]))  # batches of like lengths pad little
        rewards = [0.0] * len(examples)
        for start in range(0, len(examples), batch_size):
            rows = order[start : start + batch_size]
            batch = self.pad([{"input_ids": examples[i]} for i in rows])
            scores = self.model(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)).tolist()
            for i, score in zip(rows, scores, strict=True):
                rewards[i] = score
        return rewards
