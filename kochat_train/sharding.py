"""FSDP2 sharding (`--sharding fsdp`): the trained model loads sharded over the torchrun processes through
transformers' own `from_pretrained(distributed_config=…)` (its FSDP plan, each transformer block a unit), and each
process keeps 1/N of its weights, gradients and AdamW state. Checkpoints, the Trainer stages' and the online loops',
hold the shards each process wrote (torch.distributed.checkpoint: nothing is gathered), and a run resumes from them
exactly, also on another number of processes (the shards are cut anew as they load); the saved model is a plain
`save_pretrained` directory (gathered once, at the end).

Frozen models (the reference, reward models, the judge) are not sharded: they hold no gradients or optimizer
state, and every process scores its own answers with them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM, DistributedConfig, PretrainedConfig, PreTrainedModel

from kochat_data.errors import UsageError

SHARDS = "shards"  # a Trainer checkpoint's sharded model and optimizer state, beside its trainer_state.json


def distributed_config(sharding: str, offload: bool = False, device: str = "cpu",
                       source: str | PretrainedConfig | None = None, bf16_compute: bool = False) -> DistributedConfig | None:
    """What `from_pretrained` needs to load the model at `source` (or of that config) sharded over every process, each
    transformer block a unit (None: load it whole); the process group must be joined already. With `bf16_compute`
    (fp32 weights under bf16 precision) FSDP's mixed-precision policy gathers each unit's weights in bf16 for the
    forward and backward and reduce-scatters the gradients in fp32 into the fp32 shards AdamW steps: half the bytes
    gathered, and no gradient rounded to bf16 before it is summed over the processes."""
    if sharding == "none":
        return None
    if offload and device != "cuda":
        raise UsageError(f"--offload moves the shards from GPU memory to CPU memory; on {device} they are in CPU memory already")
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world < 2:
        raise UsageError("--sharding fsdp: needs two or more processes (torchrun --nproc_per_node N -m kochat train …)")
    return DistributedConfig(fsdp_size=world, fsdp_cpu_offload=offload, fsdp_mixed_precision=bf16_compute,
                             fsdp_plan=block_plan(source) if source else None)


def block_plan(source: str | PretrainedConfig) -> dict[str, str]:
    """An FSDP plan with each transformer block a unit of its own. transformers' default plan names Llama's modules
    (`embed_tokens`, `layers.*`); on GPT-2 (`transformer.h.*`) or GPT-NeoX it matches nothing, and the whole model
    would be one unit, gathered whole for every forward. The blocks are the modules transformers never splits
    (`_no_split_modules`), found on a weightless copy of the model."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(source if isinstance(source, PretrainedConfig) else AutoConfig.from_pretrained(source))
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    names = {re.sub(r"\.\d+(?=\.|$)", ".*", name) for name, module in model.named_modules() if type(module).__name__ in blocks}
    return dict.fromkeys(sorted(names), "free_full_weight")


def shard_in_memory(model: PreTrainedModel, where: DistributedConfig) -> PreTrainedModel:
    """A model built in memory (the base stage's fresh one) sharded as `from_pretrained(distributed_config=where)`
    shards the ones it loads: each process keeps its shard of the weights it holds (the same on every process: the
    seed is shared)."""
    where, _, mesh = type(model).prepare_distribute_model(where)
    return type(model).maybe_distribute_model(model, where, mesh)


def prepare(model: torch.nn.Module) -> dict:
    """Check that `model` is sharded (`describe`) and let no unit keep gathered weights past a forward."""
    record = describe(model)
    reshard_after_every_forward(model)
    return record


def describe(model: torch.nn.Module) -> dict:
    """What sharding did, for kochat_stage.json, read from the model itself (its FSDP units and DTensor local
    shapes); refuses in one line when the model was left whole on every process."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    units = [module for module in model.modules() if isinstance(module, FSDPModule)]
    record = {"kind": "fsdp", "units": len(units), "processes": world, "rank0_local_share": round(local_share(model), 4)}
    if units:
        policy = units[0]._get_fsdp_state()._mp_policy  # FSDP2 keeps no public getter for the policy it was given
        record["compute_dtype"] = str(policy.param_dtype or next(model.parameters()).dtype).removeprefix("torch.")
        record["reduce_dtype"] = str(policy.reduce_dtype or policy.param_dtype or next(model.parameters()).dtype).removeprefix("torch.")
    if record["units"] == 0 or record["rank0_local_share"] > 1.5 / world:
        raise UsageError(f"--sharding fsdp: rank 0 holds {record['rank0_local_share']:.0%} of the parameters with {world} "
                         f"processes ({record['units']} sharded units); the model was not sharded")
    return record


def reshard_after_every_forward(model: torch.nn.Module) -> None:
    """Every unit frees its gathered weights after each forward. transformers' plan keeps some gathered (norms, the LM
    head) for the backward; after an optimizer step those copies are stale, and a forward without a backward (an
    evaluation, a rollout) or a state dict would read them (seen: a resumed run 0.15 off the uninterrupted one)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
            module.set_reshard_after_forward(True)


def local_share(model: torch.nn.Module) -> float:
    """The share of the parameters this process holds, from the DTensors' local shapes (1.0 for a plain model)."""
    local = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        local += parameter.to_local().numel() if isinstance(parameter, DTensor) else parameter.numel()
    return local / total


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def save_shards(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The model's and the optimizer's state into `directory`/shards, each process writing the shards it holds
    (a collective call). Nothing is gathered: a checkpoint costs each process its own share of memory."""
    dcp.save({"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=Path(directory) / SHARDS)


def load_shards(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """The model's (and, given one, the optimizer's) state back from `save_shards`; each process reads its shards."""
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    dcp.load(state, checkpoint_id=Path(directory) / SHARDS)
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])


def clip_grad_norm(parts: list[torch.nn.Module], max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` over the gradients of sharded models each on a mesh of its own (PPO's actor and critic, loaded
    one by one), which torch's cannot mix: each part's norm, then their combined norm scales every gradient as
    `clip_grad_norm_` would. The scaling is written out: `clip_grads_with_norm_` left DTensor gradients wrong here
    (seen: 0.3 off the unsharded gradients, with the right total norm)."""
    grads = [[p.grad for p in part.parameters() if p.grad is not None] for part in parts]
    norms = [torch.nn.utils.get_total_norm(part) for part in grads if part]
    total = torch.linalg.vector_norm(torch.stack([norm.full_tensor() if isinstance(norm, DTensor) else norm for norm in norms]))
    scale = min(1.0, max_norm / (total.item() + 1e-6))
    for grad in (grad for part in grads for grad in part):
        grad.mul_(scale)
    return total
