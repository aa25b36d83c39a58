"""Direct preference optimisation on the RM pairs: no reward model in the loop, no sampling.

The policy starts from an SFT model and the reference is that same model, frozen. A sequence's
log-prob is summed over its response tokens and EOS (prompt and padding excluded; the same
template and truncation as SFT and RM), chosen and rejected in one forward. The reference's
log-probs are computed once before training by default, so each step needs the policy alone.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence

import datasets
import numpy as np
import torch
from transformers import (
    DataCollatorForSeq2Seq,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    set_seed,
)

from kochat_data.schema import Kind
from kochat_train import devices, outputs, stage_data, stage_models, training
from kochat_train.objectives import (
    dpo_loss,
    pair_accuracies,
    rank_pairs,
    sequence_logprobs,
)
from kochat_train.outputs import StageResult
from kochat_train.rm import PAIR_COLUMNS, select_pairs
from kochat_train.sft import sft_labels
from kochat_train.sources import capped_length, load_causal_lm
from kochat_train.stage_configs import DPOConfig
from kochat_train.template import IGNORE_INDEX, encode_examples
from kochat_train.training import GuardedTrainer


def tokenize_preferences(dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> datasets.Dataset:
    """Per pair: ids and SFT-style labels (−100 on the prompt) of chosen and rejected, and their ranks."""
    def encode(batch: dict[str, list]) -> dict[str, list]:
        rows: dict[str, list] = {"ranks": rank_pairs(batch["chosen_rank"], batch["rejected_rank"])}
        prompts = stage_data.dataset_prompts(batch)
        for side in ("chosen", "rejected"):
            examples = encode_examples(tokenizer, prompts, batch[side], max_length)
            rows[f"{side}_ids"] = [ids for ids, _ in examples]
            rows[f"{side}_labels"] = [sft_labels(ids, start) for ids, start in examples]
        rows["length"] = [max(len(c), len(r)) for c, r in zip(rows["chosen_ids"], rows["rejected_ids"], strict=True)]  # length grouping
        return rows

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, keep_in_memory=True)


class PreferenceCollator:
    """B pairs → 2B right-padded rows, chosen first (one forward for both), labels padded with −100."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": f[f"{side}_ids"], "attention_mask": [1] * len(f[f"{side}_ids"]), "labels": f[f"{side}_labels"]}
                for side in ("chosen", "rejected") for f in features]
        batch = self.pad(rows)
        batch["ranks"] = torch.tensor([f["ranks"] for f in features])
        if "ref_chosen" in features[0]:
            batch["ref_logprobs"] = torch.tensor([f["ref_chosen"] for f in features] + [f["ref_rejected"] for f in features])
        return batch


@torch.no_grad()
def pair_logprobs(model: PreTrainedModel, batch: dict[str, torch.Tensor], length_normalize: bool) -> torch.Tensor:
    """The (2B,) sequence log-probs of a collated batch, chosen rows first."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logprobs(logits, batch["labels"], length_normalize)


def pair_sequence_logprobs(features: datasets.Dataset, model: PreTrainedModel, collate: PreferenceCollator, batch_size: int,
                           length_normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """log π(chosen | prompt) and log π(rejected | prompt) of every tokenised pair, in one pass.

    The pass walks the pairs shortest first, so each batch pads to rows of about its own length
    (in dataset order it padded to the longest of random lengths and cost as much as training).
    """
    device = next(model.parameters()).device
    order = np.argsort(np.asarray(features["length"]), kind="stable")
    chosen, rejected = np.zeros(len(features)), np.zeros(len(features))
    for start in range(0, len(features), batch_size):
        rows = order[start : start + batch_size]
        batch = collate(list(features.select(rows)))
        values = pair_logprobs(model, {key: value.to(device) for key, value in batch.items()}, length_normalize).cpu()
        chosen[rows], rejected[rows] = values.view(2, -1).double().numpy()
    return chosen, rejected


def with_reference_logprobs(pairs: datasets.Dataset, reference: PreTrainedModel, collate: PreferenceCollator, config: DPOConfig) -> datasets.Dataset:
    """The pairs with `ref_chosen` and `ref_rejected`: the frozen reference's log-probs."""
    chosen, rejected = pair_sequence_logprobs(pairs, reference, collate, config.eval_batch_size, config.length_normalize)
    return pairs.add_column("ref_chosen", chosen.tolist()).add_column("ref_rejected", rejected.tolist())


class PreferenceTrainer(GuardedTrainer):
    """The DPO loss; per-step implicit rewards, margin and accuracy are logged with the loss."""

    def __init__(self, *args, dpo: DPOConfig, reference: PreTrainedModel | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dpo = dpo
        self.reference = reference
        self.step_stats: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        chosen, rejected = sequence_logprobs(logits, inputs["labels"], self.dpo.length_normalize).chunk(2)
        reference = inputs["ref_logprobs"] if "ref_logprobs" in inputs else pair_logprobs(self.reference, inputs, self.dpo.length_normalize)
        ref_chosen, ref_rejected = reference.chunk(2)
        loss, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.dpo.beta, self.dpo.loss)
        if model.training:
            margins = chosen_rewards - rejected_rewards
            for key, value in (("rewards_chosen", chosen_rewards.mean()), ("rewards_rejected", rejected_rewards.mean()),
                               ("rewards_margin", margins.mean()), ("rewards_accuracy", (margins > 0).float().mean())):
                self.step_stats[key].append(value.item())
        return (loss, torch.stack([chosen_rewards, rejected_rewards], dim=1)) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, rewards = self.compute_loss(model, inputs, return_outputs=True)
        return (loss.detach(), None, None) if prediction_loss_only else (loss.detach(), rewards.detach(), inputs["ranks"])

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self.step_stats:  # the steps since the last train log line
            logs.update({key: float(np.mean(values)) for key, values in self.step_stats.items()})
            self.step_stats.clear()
        super().log(logs, *args, **kwargs)


def preference_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """The implicit reward model's accuracy (tie = wrong) overall and per rank pair, and mean rewards and margin."""
    rewards, ranks = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    margins = rewards[:, 0] - rewards[:, 1]
    return {**pair_accuracies(margins, ranks), "rewards_chosen": float(rewards[:, 0].mean()),
            "rewards_rejected": float(rewards[:, 1].mean()), "rewards_margin": float(margins.mean())}


def train_dpo(config: DPOConfig, callbacks: Sequence[TrainerCallback] = ()) -> StageResult:
    columns = PAIR_COLUMNS + ([] if config.pairs == "all" else ["prompt_id"])
    data = stage_data.load_stage_data(config.data, Kind.RM, columns, "kochat train dpo")
    data["train"] = select_pairs(data["train"], config.pairs, config.judge_share)
    train_pairs = stage_data.require_rows(data, "train", config.data, Kind.RM, "no pairs to train on")
    set_seed(config.seed)
    tokenizer = stage_models.stage_tokenizer(config, config.model)
    policy = stage_models.trained_causal_lm(config, config.model, tokenizer)
    reference = load_causal_lm(config.model, tokenizer, devices.trained_dtype(config)).requires_grad_(False).eval()
    stage_models.disable_dropout(policy)  # at step 0 the implicit rewards are exactly 0
    stage_models.maybe_apply_lora(policy, config)  # a wrong --lora-targets is refused before --out is touched
    resume_from = outputs.prepare_output(config)  # only once the inputs are known to be good
    max_length = capped_length(config.max_length, policy)
    collate = PreferenceCollator(tokenizer)
    train_features = tokenize_preferences(train_pairs, tokenizer, max_length)
    eval_features = tokenize_preferences(data["eval"], tokenizer, max_length) if len(data["eval"]) else None
    started = time.perf_counter()
    if config.precompute_reference:
        device = devices.resolve_device(config.device)
        reference.to(device)
        # Under the autocast the steps will run in, so that the implicit rewards start at 0 in bf16 too.
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=devices.uses_bf16(config, device)):
            train_features = with_reference_logprobs(train_features, reference, collate, config)
            eval_features = with_reference_logprobs(eval_features, reference, collate, config) if eval_features is not None else None
        reference = None  # every step reads the stored log-probs
    reference_seconds = time.perf_counter() - started
    trainer = PreferenceTrainer(
        model=policy,
        args=training.training_arguments(config, len(train_features), remove_unused_columns=False, evaluate=eval_features is not None),
        train_dataset=train_features,
        eval_dataset=eval_features,
        data_collator=collate,
        processing_class=tokenizer,
        compute_metrics=preference_metrics,
        dpo=config,
        reference=reference,
    )
    if reference is not None:
        trainer.reference = reference.to(trainer.args.device)
    metrics = training.fit(trainer, config, "dpo", resume_from, callbacks)
    metrics.update(train_pairs=len(train_pairs), reference_seconds=round(reference_seconds, 1))
    return outputs.save_stage(policy, tokenizer, config, "dpo", metrics)
