"""Supervised fine-tuning on the KoChatGPT template: loss on the response and its EOS only."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
from transformers import (
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
    TrainerCallback,
    set_seed,
)

from kochat_data.schema import Kind
from kochat_train import outputs, stage_data, stage_models, training
from kochat_train.outputs import StageResult
from kochat_train.sources import capped_length
from kochat_train.stage_configs import SFTConfig
from kochat_train.template import IGNORE_INDEX, encode_examples
from kochat_train.training import GuardedTrainer


def sft_labels(input_ids: list[int], response_start: int) -> list[int]:
    """Labels that train on the response and its EOS and ignore the prompt."""
    return [IGNORE_INDEX] * response_start + input_ids[response_start:]


def tokenize_sft(dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> datasets.Dataset:
    def encode(batch: dict[str, list]) -> dict[str, list]:
        examples = encode_examples(tokenizer, stage_data.dataset_prompts(batch), batch["completion"], max_length)
        return {
            "input_ids": [ids for ids, _ in examples],
            "attention_mask": [[1] * len(ids) for ids, _ in examples],
            "labels": [sft_labels(ids, start) for ids, start in examples],
        }

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, keep_in_memory=True)


def train_sft(config: SFTConfig, callbacks: Sequence[TrainerCallback] = ()) -> StageResult:
    data = stage_data.load_stage_data(config.data, Kind.SFT, ["prompt", "completion"], "kochat train sft")
    train_rows = stage_data.require_rows(data, "train", config.data, Kind.SFT, "nothing to train on")
    set_seed(config.seed)
    tokenizer = stage_models.stage_tokenizer(config, config.model)
    model = stage_models.trained_causal_lm(config, config.model, tokenizer)
    stage_models.maybe_apply_lora(model, config)  # a wrong --lora-targets is refused before --out is touched
    resume_from = outputs.prepare_output(config)  # only once the inputs are known to be good
    max_length = capped_length(config.max_length, model)
    eval_dataset = tokenize_sft(data["eval"], tokenizer, max_length) if len(data["eval"]) else None
    trainer = GuardedTrainer(
        model=model,
        args=training.training_arguments(config, len(train_rows), evaluate=eval_dataset is not None),
        train_dataset=tokenize_sft(train_rows, tokenizer, max_length),
        eval_dataset=eval_dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX),
        processing_class=tokenizer,
    )
    # Where the starting model stands on the held-out answers: the baseline fine-tuning must beat.
    start = {"start_eval_loss": training.held_out_loss(trainer)} if eval_dataset is not None else {}
    metrics = training.fit(trainer, config, "sft", resume_from, callbacks)
    return outputs.save_stage(model, tokenizer, config, "sft", {**metrics, **start})
