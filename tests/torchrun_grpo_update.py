"""Run by tests/test_distributed.py, alone or under torchrun: two GRPO optimizer steps on a saved batch of grouped
answers, each process on its share of the groups (with sharding fsdp, on its share of the weights too); rank 0 saves
the whole model."""

import sys

import torch

from kochat_train import distributed, outputs
from kochat_train.grpo import GRPOConfig, GRPOTrainer
from kochat_train.rollout import Rollout


def main(sft: str, data: str, saved_batch: str, out: str, micro_batch_size: int, sharding: str = "none") -> None:
    distributed.init_distributed("cpu")
    rank, world = distributed.rank_and_world()
    config = GRPOConfig(data=data, out=out, sft=sft, reward=["tests.test_grpo:short_answers"], group_size=4, advantage="batch",
                        micro_batch_size=micro_batch_size, iterations=2, beta=0.1, mask_truncated=True, max_new_tokens=12,
                        learning_rate=1e-2, precision="fp32", device="cpu", sharding=sharding)
    trainer = GRPOTrainer(config)
    saved = torch.load(saved_batch, weights_only=False)
    share = len(saved["prompts"]) // world
    rows = slice(rank * share * config.group_size, (rank + 1) * share * config.group_size)
    part = Rollout(*(getattr(saved["rollout"], key)[rows] for key in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "ended")))
    batch, _ = trainer.assess(saved["prompts"][rank * share : (rank + 1) * share], part)
    trainer.update(part, batch)
    outputs.save_model(trainer.actor, out)  # every process, when sharded


if __name__ == "__main__":
    main(*sys.argv[1:5], int(sys.argv[5]), *sys.argv[6:])
