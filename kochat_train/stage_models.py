"""What a stage does to the model it starts from: the tokenizer in the stage's template, dropout off for the
stages that compare log-probs, LoRA and gradient checkpointing when asked for; where its weights go (whole on every
process, or sharded over them)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    DistributedConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kochat_train import devices, sharding
from kochat_train.config import TrainConfig
from kochat_train.distributed import init_distributed
from kochat_train.lora import apply_lora
from kochat_train.sources import load_causal_lm, load_tokenizer, trust_remote_code
from kochat_train.template import template_of


def stage_tokenizer(config: TrainConfig, source: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of the model a stage starts from, in the template the stage asks for or inherits; the
    template's name goes into the config, so kochat_config.json records it for every later stage and command."""
    trust_remote_code(config.trust_remote_code)  # the first load of every stage: all later ones follow it
    tokenizer = load_tokenizer(source, config.template, config.force_template, config.system_prompt)
    config.template = template_of(tokenizer)
    return tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """No dropout: log-probs that are compared across forwards (PPO's ratio, DPO's against the
    reference) must come from the same function. Llama, Qwen2, GPT-NeoX, Phi3 and Gemma2 drop attention
    probabilities through a float rate their attention function reads (`attention_dropout`), not a module."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def maybe_apply_lora(model: PreTrainedModel, config: TrainConfig, heads: tuple[str, ...] = ()) -> None:
    """LoRA if asked for, and gradient checkpointing if asked for (for the stages outside the Trainer, which
    switches it on itself from the TrainingArguments)."""
    if config.lora_rank > 0:
        targets = [name.strip() for names in config.lora_targets for name in names.split(",") if name.strip()]
        apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, trainable_heads=heads, targets=targets)
    if config.gradient_checkpointing and getattr(model, "supports_gradient_checkpointing", False):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def placement(config: TrainConfig, source: str | Path | PretrainedConfig) -> DistributedConfig | None:
    """How the trained model loads: whole (None), or sharded over torchrun's processes (`--sharding fsdp`; the process
    group is joined first)."""
    device = devices.resolve_device(config.device)
    init_distributed(device)
    bf16_compute = devices.uses_bf16(config, device) and devices.trained_dtype(config) == torch.float32
    return sharding.distributed_config(config.sharding, config.offload, device,
                                       source if isinstance(source, PretrainedConfig) else str(source), bf16_compute)


def prepared(model: PreTrainedModel, where: DistributedConfig | None) -> PreTrainedModel:
    """A model loaded as `placement` said, refused in one line when it was to be sharded and is not (`sharding.prepare`)."""
    if where is not None:
        sharding.prepare(model)
    return model


def trained_causal_lm(config: TrainConfig, source: str | Path, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The causal LM a stage trains, in its trained dtype, whole or sharded as the config says."""
    where = placement(config, source)
    return prepared(load_causal_lm(source, tokenizer, devices.trained_dtype(config), where), where)
