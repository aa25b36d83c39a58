"""LoRA through loralib: swap the projections of the transformer blocks, merge them back for saving."""

from __future__ import annotations

import loralib
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def apply_lora(model: nn.Module, rank: int, alpha: int, dropout: float, trainable_heads: tuple[str, ...] = ()) -> int:
    """Replace every Linear/Conv1D inside the transformer by a LoRA layer; freeze all but LoRA and heads.

    Returns the number of layers replaced. GPT-2's Conv1D keeps its weight as (in, out), which
    is loralib's `fan_in_fan_out` layout.
    """
    replaced = 0
    for parent in list(model.base_model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                in_features, out_features, fan_in_fan_out = child.weight.shape[0], child.weight.shape[1], True
            elif isinstance(child, nn.Linear) and not isinstance(child, loralib.LoRALayer):
                in_features, out_features, fan_in_fan_out = child.in_features, child.out_features, False
            else:
                continue
            # merge_weights=False: loralib would otherwise fold ΔW into the weight on every eval()
            # and take it out on every train(), i.e. twice per PPO step; merge_lora folds it once.
            layer = loralib.Linear(
                in_features, out_features, r=rank, lora_alpha=alpha, lora_dropout=dropout,
                fan_in_fan_out=fan_in_fan_out, merge_weights=False, bias=child.bias is not None,
            )
            # loralib stores a fan_in_fan_out weight as a transposed view; a contiguous copy keeps
            # checkpoints writable by safetensors.
            layer.weight.data = child.weight.detach().clone().contiguous()
            if child.bias is not None:
                layer.bias.data = child.bias.detach().clone()
            setattr(parent, name, layer.to(child.weight.device, child.weight.dtype))
            replaced += 1
    loralib.mark_only_lora_as_trainable(model, bias="none")
    for head in trainable_heads:
        for parameter in getattr(model, head).parameters():
            parameter.requires_grad_(True)
    return replaced


def merge_lora(model: nn.Module) -> int:
    """Fold each LoRA branch into its weight and restore the plain layer, so `from_pretrained` loads it."""
    merged = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, loralib.Linear):
                continue
            weight = child.weight.detach()
            if child.r > 0 and not child.merged:
                delta = (child.lora_B @ child.lora_A).detach() * child.scaling  # (out, in)
                weight = weight + (delta.T if child.fan_in_fan_out else delta)
            if child.fan_in_fan_out:
                plain = Conv1D(nf=weight.shape[1], nx=weight.shape[0])
            else:
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            with torch.no_grad():
                plain.weight.copy_(weight)
                if child.bias is not None:
                    plain.bias.copy_(child.bias)
            plain.weight.requires_grad_(True)
            setattr(parent, name, plain.to(weight.device, weight.dtype))
            merged += 1
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return merged
