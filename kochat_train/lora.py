"""LoRA through loralib: swap the projections of the transformer blocks, merge them back for saving."""

from __future__ import annotations

import loralib
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kochat_data.errors import UsageError


def apply_lora(model: nn.Module, rank: int, alpha: int, dropout: float, trainable_heads: tuple[str, ...] = (),
               targets: list[str] | None = None) -> int:
    """Replace the Linear/Conv1D layers inside the transformer (`model.base_model`: the blocks' attention and MLP
    projections; the embeddings and the LM head sit outside or are no Linear) by LoRA layers, only those named in
    `targets` when given; freeze all but LoRA and heads.

    Returns the number of layers replaced. GPT-2's Conv1D keeps its weight as (in, out), which
    is loralib's `fan_in_fan_out` layout.
    """
    names = {name for parent in model.base_model.modules() for name, child in parent.named_children()
             if isinstance(child, (Conv1D, nn.Linear))}
    if targets and (unknown := sorted(set(targets) - names)):
        raise UsageError(f"--lora-targets: {', '.join(unknown)} name no Linear layer of {type(model).__name__}; "
                         f"its layers are {', '.join(sorted(names))}")
    replaced = 0
    for parent in list(model.base_model.modules()):
        for name, child in list(parent.named_children()):
            if targets and name not in targets:
                continue
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


class WithoutLora:
    """A model's forward with every LoRA branch skipped: the weights it started from, without a second copy of them
    (the frozen reference of PPO and GRPO with LoRA). loralib skips a branch it takes for merged into the weight; the
    branches are never merged before saving, so skipping them leaves each weight as it was loaded."""

    def __init__(self, model: nn.Module):
        self.model = model

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        branches = [layer for layer in self.model.modules() if isinstance(layer, loralib.Linear) and layer.r > 0 and not layer.merged]
        for layer in branches:
            layer.merged = True
        try:
            return self.model(*args, **kwargs)
        finally:
            for layer in branches:
                layer.merged = False

    def parameters(self):
        return self.model.parameters()


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
