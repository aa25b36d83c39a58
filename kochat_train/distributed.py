"""The processes of a torchrun launch: joining the group, who is rank 0, and the collectives the stages share
(sums, gathers, averaged gradients for the loops outside the Trainer)."""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from kochat_train.sharding import is_sharded


def init_distributed(device: str) -> None:
    """Join the process group that `torchrun` describes (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA.

    Done before anything touches the output directory, so that only rank 0 writes there;
    the Trainer (through accelerate) finds the group already initialised and uses it.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        # Leave the group before the interpreter tears it down: a gloo group destroyed at exit
        # can abort a rank ("terminate called without an active exception") after its work is done.
        atexit.register(dist.destroy_process_group)


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor summed over every process (itself when there is one)."""
    if not dist.is_initialized():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def gather_objects(value: Any) -> list[Any]:
    """`value` from every process, in rank order (a one-element list without torchrun)."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def mean_over_processes(stats: dict[str, float]) -> dict[str, float]:
    """Each logged number averaged over the processes (throughputs summed: they run side by side)."""
    if not dist.is_initialized():
        return stats
    world = dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    totals = all_reduce_sum(torch.tensor(list(stats.values()), dtype=torch.float64, device=device)).tolist()
    return {key: total if key.endswith("_per_second") else total / world for key, total in zip(stats, totals, strict=True)}


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Data-parallel step by hand, for PPO's own loop: each gradient becomes the mean over processes.

    DistributedDataParallel hooks only the module's forward, while PPO reads the critic
    through `token_values` and samples through `generate`; one flattened all-reduce per
    update does the same job without rewrapping the models.
    """
    if not dist.is_initialized():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(chunk.view_as(grad))


def broadcast_parameters(modules: Sequence[torch.nn.Module]) -> None:
    """Every process starts from rank 0's weights (LoRA and new heads are initialised randomly); a sharded model's
    shards are each process's own."""
    if dist.is_initialized():
        for module in modules:
            if not is_sharded(module):
                for tensor in module.state_dict().values():
                    dist.broadcast(tensor, src=0)
