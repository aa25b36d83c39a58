"""Reward model: backbone + scalar head, reward at the last real token, pairwise loss on (chosen, rejected)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from torch import nn
from transformers import (
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    set_seed,
)

from kochat_data.errors import UsageError
from kochat_data.schema import PROMPT_MESSAGES, Kind
from kochat_data.split import judge_prompt_ids
from kochat_train import (
    devices,
    distributed,
    outputs,
    stage_data,
    stage_models,
    training,
)
from kochat_train.objectives import (
    last_token_index,
    pair_accuracies,
    pairwise_loss,
    positions_from_mask,
    rank_pairs,
)
from kochat_train.outputs import StageResult
from kochat_train.sources import (
    REWARD_HEADS,
    capped_length,
    init_reward_model,
    reads_pairs,
    with_distinct_pad,
)
from kochat_train.sharding import is_sharded
from kochat_train.stage_configs import RewardConfig
from kochat_train.template import (
    EncoderReading,
    encoder_reading,
    reward_inputs,
    write_encoder_reading,
)
from kochat_train.training import GuardedTrainer

PAIR_COLUMNS = ["prompt", "chosen", "rejected", "chosen_rank", "rejected_rank"]


def select_pairs(pairs: datasets.Dataset, which: str, judge_share: float) -> datasets.Dataset:
    """The train pairs of the proxy or the judge share (prompt-grouped, disjoint), or all of them."""
    if which == "all" or len(pairs) == 0:
        return pairs
    prompts = sorted(set(pairs["prompt_id"]))
    judge = judge_prompt_ids(prompts, judge_share)
    if len(judge) == (0 if which == "judge" else len(prompts)):
        raise UsageError(f"--pairs {which}: the judge share {judge_share:g} holds {'none' if which == 'judge' else 'all'} of the "
                         f"{len(prompts)} train prompts, so the {which} share has no pair; "
                         f"{'raise' if which == 'judge' else 'lower'} --judge-share")
    return pairs.filter(lambda ids: [(pid in judge) == (which == "judge") for pid in ids], input_columns="prompt_id",
                        batched=True, keep_in_memory=True)


def relevance_negatives(pairs: datasets.Dataset, per_prompt: int, seed: int) -> datasets.Dataset:
    """Pairs of each prompt's best (rank 0) answer against the best answer of another prompt of the same pairs.

    The data's own relevance pairs (rank 0 vs 1) are few next to the fluency pairs; these add
    more of the same kind from answers already there, so the proxy and judge shares stay disjoint.
    Round r pairs prompt i with the answer of prompt (i + shift_r) mod n, shifts drawn without
    replacement from 1 … n−1, so no prompt meets its own answer or the same other answer twice.
    """
    best: dict[tuple[str, str], str] = {}  # (prompt, its conversation) → its best answer
    conversations = pairs[PROMPT_MESSAGES] if PROMPT_MESSAGES in pairs.column_names else [""] * len(pairs)
    for question, chosen, rank in zip(zip(pairs["prompt"], conversations, strict=True), pairs["chosen"], pairs["chosen_rank"], strict=True):
        if rank in (0, None):  # rank 0, or the preferred answer of a pair without ranks
            best.setdefault(question, chosen)
    questions, answers = list(best), list(best.values())
    rounds = min(per_prompt, len(questions) - 1)
    shifts = np.random.default_rng(seed).choice(np.arange(1, len(questions)), size=rounds, replace=False) if rounds > 0 else []
    rows = [(questions[i], answers[i], answers[(i + int(shift)) % len(questions)]) for shift in shifts for i in range(len(questions))]
    rows = [row for row in rows if row[1] != row[2]]  # two prompts with the same answer make no pair
    return datasets.Dataset.from_dict({"prompt": [r[0][0] for r in rows], "chosen": [r[1] for r in rows], "rejected": [r[2] for r in rows],
                                       "chosen_rank": [0] * len(rows), "rejected_rank": [1] * len(rows),
                                       PROMPT_MESSAGES: [r[0][1] for r in rows]},
                                      features=datasets.Features({**pairs.select_columns(PAIR_COLUMNS).features,
                                                                  PROMPT_MESSAGES: datasets.Value("string")}))


class ScalarRewardModel(nn.Module):
    """Wraps a `…ForSequenceClassification` model. A decoder: its backbone, then its `score` head at
    the last real token. The library's own pooling finds that token by comparing ids with
    pad_token_id, which drops a real EOS when pad = eos (KoGPT-2); the attention mask is the truth.
    An encoder: the model as transformers runs it (its classifier reads the first token).
    """

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model
        self.reads_pairs = reads_pairs(model)
        self.sharded = is_sharded(model)
        if self.sharded and not self.reads_pairs:
            head_at_every_position(model)

    @property
    def is_distributed_loading_by_transformers(self) -> bool:
        """Tells the Trainer that the wrapped model was sharded when loaded: not to be wrapped or moved again."""
        return getattr(self.model, "is_distributed_loading_by_transformers", False)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions_from_mask(attention_mask)
        ).last_hidden_state  # (B, T, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The reward of each sequence. (B, T) → (B,)"""
        if self.reads_pairs:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()
        if self.sharded:
            values = self.token_values(input_ids, attention_mask)
            return values[torch.arange(len(values), device=values.device), last_token_index(attention_mask)]
        hidden = self.hidden_states(input_ids, attention_mask)
        last = hidden[torch.arange(len(hidden), device=hidden.device), last_token_index(attention_mask)]  # (B, H)
        return self.model.score(last).squeeze(-1).float()

    def token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The head at every position: PPO's critic reads a value per token. (B, T) → (B, T)"""
        if self.reads_pairs:
            raise TypeError("an encoder reward model gives one score per text, not a value per token")
        if self.sharded:  # the head at every position, from the model's own forward (`head_at_every_position`)
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=positions_from_mask(attention_mask)).logits.squeeze(-1).float()
        return self.model.score(self.hidden_states(input_ids, attention_mask)).squeeze(-1).float()


def head_at_every_position(model: PreTrainedModel) -> None:
    """Make a sharded decoder reward model's own forward return its `score` head at every position as `logits`
    (B, T, 1), in place of the library's pooled one.

    Under FSDP2 the head, the final norm and the embeddings belong to the root unit: gathered only inside the root's
    forward, and gathered again for the backward only through what that forward returns. Reading the backbone and
    the head separately (as the unsharded path does) would meet sharded weights; so the head's output at every
    position is taken as the forward computes it and put into the forward's output before FSDP's hooks see it."""
    captured = {}
    model.score.register_forward_hook(lambda module, args, output: captured.update(scores=output))

    def every_position(module, args, output):
        output.logits = captured.pop("scores")
        return output

    model.register_forward_hook(every_position, prepend=True)  # before FSDP's post-forward hook


def tokenize_pairs(dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int,
                   reading: EncoderReading | None = None) -> datasets.Dataset:
    """Chosen and rejected as the reward model reads them (`reward_inputs`; `reading` for an encoder)."""
    def encode(batch: dict[str, list]) -> dict[str, list]:
        prompts = stage_data.dataset_prompts(batch)
        chosen = reward_inputs(tokenizer, prompts, batch["chosen"], max_length, reading)
        rejected = reward_inputs(tokenizer, prompts, batch["rejected"], max_length, reading)
        return {
            "input_ids_chosen": chosen,
            "input_ids_rejected": rejected,
            "ranks": rank_pairs(batch["chosen_rank"], batch["rejected_rank"]),
            "length": [max(len(c), len(r)) for c, r in zip(chosen, rejected, strict=True)],
        }

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, keep_in_memory=True)


class PairCollator:
    """B pairs → one batch of 2B right-padded rows, chosen first: both sides in one forward."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": f["input_ids_chosen"]} for f in features] + [{"input_ids": f["input_ids_rejected"]} for f in features]
        batch = self.pad(rows)
        batch["ranks"] = torch.tensor([f["ranks"] for f in features])
        return batch


class RewardTrainer(GuardedTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rewards = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        chosen, rejected = rewards.chunk(2)
        loss = pairwise_loss(chosen, rejected)
        return (loss, torch.stack([chosen, rejected], dim=1)) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, rewards = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), rewards.detach(), inputs["ranks"]  # ranks ride as "labels" into compute_metrics


def pair_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy (tie = wrong) and mean margin, overall and per (chosen rank, rejected rank)."""
    rewards, ranks = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    margins = rewards[:, 0] - rewards[:, 1]
    return {**pair_accuracies(margins, ranks), "mean_margin": float(margins.mean())}


def train_rm(config: RewardConfig, callbacks: Sequence[TrainerCallback] = ()) -> StageResult:
    columns = PAIR_COLUMNS + ([] if config.pairs == "all" else ["prompt_id"])
    data = stage_data.load_stage_data(config.data, Kind.RM, columns, "kochat train rm")
    data["train"] = select_pairs(data["train"], config.pairs, config.judge_share)
    train_pairs = stage_data.require_rows(data, "train", config.data, Kind.RM, "no pairs to train on (records with all ranks tied give none)")
    if config.relevance_negatives:
        train_pairs = datasets.concatenate_datasets([train_pairs.select_columns(PAIR_COLUMNS + [PROMPT_MESSAGES]),
                                                     relevance_negatives(train_pairs, config.relevance_negatives, config.seed)])
    set_seed(config.seed)  # before the new score head is initialised
    tokenizer = with_distinct_pad(stage_models.stage_tokenizer(config, config.model))
    where = stage_models.placement(config, config.model)
    backbone = stage_models.prepared(init_reward_model(config.model, tokenizer, devices.trained_dtype(config), where), where)
    # A wrong --lora-targets is refused before --out is touched.
    stage_models.maybe_apply_lora(backbone, config, heads=tuple(head for head in REWARD_HEADS if hasattr(backbone, head)))
    resume_from = outputs.prepare_output(config)  # only once the inputs are known to be good
    if config.freeze_embeddings:
        backbone.get_input_embeddings().requires_grad_(False)
    reading = encoder_reading(config.model) if reads_pairs(backbone) else None
    max_length = capped_length(config.max_length, backbone)
    eval_dataset = tokenize_pairs(data["eval"], tokenizer, max_length, reading) if len(data["eval"]) else None
    trainer = RewardTrainer(
        model=ScalarRewardModel(backbone),
        args=training.training_arguments(config, len(train_pairs), remove_unused_columns=False, evaluate=eval_dataset is not None),
        train_dataset=tokenize_pairs(train_pairs, tokenizer, max_length, reading),
        eval_dataset=eval_dataset,
        data_collator=PairCollator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=pair_metrics,
    )
    metrics = training.fit(trainer, config, "rm", resume_from, callbacks)
    metrics["train_pairs"] = len(train_pairs)
    if reading is not None and distributed.is_main_process():
        write_encoder_reading(Path(config.out), reading)
    return outputs.save_stage(backbone, tokenizer, config, "rm", metrics, reads_template=reading is None)
