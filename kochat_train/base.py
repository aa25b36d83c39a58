"""`kochat train base`: a byte-level BPE tokenizer and a small GPT-2 pretrained on the corpus, no network needed."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, TrainerCallback, default_data_collator, set_seed

from kochat_data.errors import UsageError
from kochat_data.schema import Kind
from kochat_train.config import TrainConfig, option
from kochat_train.objectives import unigram_perplexity
from kochat_train.runtime import (
    GuardedTrainer, StageResult, fit, load_stage_data, prepare_output, require_build_directory, save_stage, training_arguments,
)
from kochat_train.template import render_prompt

# pad is its own token so padding never looks like an end of text.
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

PRESETS = {
    "tiny": {"vocab_size": 400, "n_layer": 1, "n_embd": 32, "n_head": 2},
    "small": {"vocab_size": 8000, "n_layer": 4, "n_embd": 256, "n_head": 4},
}

# The text columns of each built dataset that make up the pretraining corpus.
TEXT_COLUMNS = {Kind.SFT: ("prompt", "completion"), Kind.RM: ("prompt", "chosen", "rejected"), Kind.PPO: ("prompt",)}


@dataclass
class BaseConfig(TrainConfig):
    preset: str = option("small", f"model size: {', '.join(PRESETS)} (tiny is for tests)")
    vocab_size: int | None = option(None, "BPE vocabulary size, special tokens included (default: the preset's)")
    n_layer: int | None = option(None, "transformer blocks (default: the preset's)")
    n_embd: int | None = option(None, "hidden width (default: the preset's)")
    n_head: int | None = option(None, "attention heads; must divide n_embd (default: the preset's)")
    min_frequency: int = option(2, "pairs seen fewer times are not merged by BPE")
    learning_rate: float = option(1e-3, "peak learning rate (higher than fine-tuning: the weights start random)")
    sampling: str = option("random", "batch order: random (packed blocks all have one length), group_by_length or sequential")

    def resolved(self) -> BaseConfig:
        """The config with preset values in every architecture field left empty."""
        preset = PRESETS.get(self.preset, {})
        return type(self)(**{**vars(self), **{k: v for k, v in preset.items() if getattr(self, k) is None}})

    def problems(self) -> list[str]:
        found = super().problems()
        if self.preset not in PRESETS:
            return found + [f"'preset' must be one of {', '.join(PRESETS)}, got {self.preset!r}"]
        config = self.resolved()
        if config.vocab_size < 300:
            found.append(f"'vocab_size' must be ≥ 300 (256 bytes + special tokens), got {config.vocab_size}")
        if config.n_embd % config.n_head:
            found.append(f"'n_head' ({config.n_head}) must divide 'n_embd' ({config.n_embd})")
        return found


def corpus_texts(data: dict[Kind, datasets.DatasetDict], split: str) -> list[str]:
    """Every distinct text of one split, in a fixed order."""
    texts: dict[str, None] = {}
    for kind, dataset in data.items():
        for column in TEXT_COLUMNS[kind]:
            texts.update(dict.fromkeys(text for text in dataset[split][column] if text))
    return list(texts)


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def pack_blocks(tokenizer: PreTrainedTokenizerFast, texts: list[str], block_size: int) -> np.ndarray:
    """Texts joined with EOS and cut into (N, block_size) blocks; a short corpus gives one shorter block."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id]
    stream = np.concatenate([np.asarray(row + eos, dtype=np.int64) for row in ids]) if ids else np.zeros(0, np.int64)
    if len(stream) < block_size:
        return stream[None, :]
    return stream[: len(stream) // block_size * block_size].reshape(-1, block_size)


def _block_dataset(blocks: np.ndarray) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()})


def train_base(config: BaseConfig, callbacks: Sequence[TrainerCallback] = ()) -> StageResult:
    config = config.resolved()
    require_build_directory(config.data)
    data = {kind: load_stage_data(config.data, kind, list(TEXT_COLUMNS[kind]), "kochat train base")
            for kind in Kind if (Path(config.data) / kind.value).is_dir()}
    if not data:
        raise UsageError(f"{config.data}: no sft, rm or ppo dataset here; build one with `kochat data build`")
    resume_from = prepare_output(config)
    set_seed(config.seed)
    train_texts = corpus_texts(data, "train")
    seen = set(train_texts)
    eval_texts = [text for text in corpus_texts(data, "eval") if text not in seen]
    # The template's markers join the tokenizer corpus (not the LM's) so they become a few tokens.
    templates = [render_prompt(prompt) for prompt in data[Kind.SFT]["train"]["prompt"]] if Kind.SFT in data else []
    tokenizer = train_tokenizer(train_texts + templates, config.vocab_size, config.min_frequency)
    train_blocks = pack_blocks(tokenizer, train_texts, config.max_length)
    eval_blocks = pack_blocks(tokenizer, eval_texts, config.max_length) if eval_texts else None
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.max_length, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    trainer = GuardedTrainer(
        model=model,
        args=training_arguments(config, len(train_blocks), evaluate=eval_blocks is not None),
        train_dataset=_block_dataset(train_blocks),
        eval_dataset=_block_dataset(eval_blocks) if eval_blocks is not None else None,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    metrics = fit(trainer, config, "base", resume_from, callbacks)
    metrics["train_tokens"] = int(train_blocks.size)
    if eval_blocks is not None:
        metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
        # The LM predicts every block position but the first; score the baseline on the same tokens.
        metrics["unigram_perplexity"] = unigram_perplexity(train_blocks.ravel(), eval_blocks[:, 1:].ravel(), len(tokenizer))
    return save_stage(model, tokenizer, config, "base", metrics)
