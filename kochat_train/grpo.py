"""GRPO, Dr. GRPO and RLOO: critic-free online RL, one stage (`kochat train grpo`, `kochat train rloo`).

One step = `batch_size` prompts per process, each answered `group_size` times through the shared
generation path; the composite reward of each answer (`reward_functions`); an advantage from the
rewards of its group (`objectives.ADVANTAGES`); then `iterations` optimizer steps on the batch, each
the clipped surrogate (+ β·k3 when the KL is in the loss) aggregated over the global batch
(`objectives.LOSS_AGGREGATIONS`) in micro-batches whose gradients add up to the whole batch's.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from kochat_data.progress import stderr_console
from kochat_train import (
    devices,
    distributed,
    online,
    outputs,
    sharding,
    stage_models,
    training,
)
from kochat_train import objectives as ops
from kochat_train.reward_functions import CompositeReward
from kochat_train.rewards import RewardScorer
from kochat_train.rollout import (
    Rollout,
    decoding_config,
    entropy,
    generate,
    response_logits,
    response_texts,
    token_logprobs,
)
from kochat_train.stage_configs import GRPOConfig, RLOOConfig

__all__ = ["GRPOConfig", "GRPOTrainer", "RLOOConfig", "train_grpo", "train_rloo"]


class GRPOTrainer:
    """Holds the policy, the frozen reference (none when β = 0), the rewards and the optimizer."""

    headline = "reward"

    def __init__(self, config: GRPOConfig):
        self.config = config
        device = devices.resolve_device(config.device)
        self.device = torch.device(device)
        self.tokenizer = stage_models.stage_tokenizer(config, config.sft)
        self.actor = stage_models.trained_causal_lm(config, config.sft, self.tokenizer)
        self.sharding = sharding.is_sharded(self.actor)  # every process then evaluates: a sharded forward is collective
        self.trained = self.actor  # what the optimizer steps
        self.reward = CompositeReward(config.reward, device, judge=Path(config.judge) if config.judge else None)
        self.judge = RewardScorer(Path(config.judge), device) if config.judge else None
        stage_models.maybe_apply_lora(self.actor, config)
        stage_models.disable_dropout(self.actor)  # the ratio's two log-probs must come from the same function
        self.actor.to(self.device)
        self.reference = online.frozen_reference(config, self.actor, self.tokenizer, device) if config.beta > 0 else None
        distributed.broadcast_parameters([self.actor])
        self.trainable = [p for p in self.actor.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        sampling = {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p}
        self.decoding = decoding_config(self.tokenizer, **sampling)  # held-out answers: one per prompt
        self.group_decoding = decoding_config(self.tokenizer, **sampling, num_return_sequences=config.group_size)
        self.autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=devices.uses_bf16(config, device))

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> tuple[Rollout, dict[str, torch.Tensor], dict[str, float]]:
        """G answers to each prompt (rows grouped by prompt), scored, with their advantages."""
        self.actor.eval()
        started = time.perf_counter()
        with self.autocast:
            rollout = generate(self.actor, self.tokenizer, prompts, self.config.max_length, self.group_decoding)
        seconds = time.perf_counter() - started
        batch, stats = self.assess(prompts, rollout)
        stats["generated_tokens_per_second"] = rollout.response_mask.sum().item() / seconds
        return rollout, batch, stats

    @torch.no_grad()
    def assess(self, prompts: list[str], rollout: Rollout) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Rewards, reference log-probs and advantages of a batch of grouped answers."""
        config = self.config
        ended = rollout.ended
        row_prompts = [prompt for prompt in prompts for _ in range(config.group_size)]
        totals, components = self.reward.score(row_prompts, response_texts(self.tokenizer, rollout), ended.tolist())
        scores = torch.tensor(totals, dtype=torch.float32, device=self.device)
        rewards = scores if config.mask_truncated else scores - config.missing_eos_penalty * (~ended).float()
        mask = rollout.response_mask.float()
        batch = {"scores": scores, "loss_mask": mask * (ended.float()[:, None] if config.mask_truncated else 1.0)}
        if self.reference is not None:
            with self.autocast:
                batch["ref_logprobs"] = token_logprobs(response_logits(self.reference, rollout, config.temperature), rollout.response_ids)
                if config.kl_in == "reward":
                    logprobs = token_logprobs(response_logits(self.actor, rollout, config.temperature), rollout.response_ids)
                    rewards = rewards - config.beta * (ops.kl_k1(logprobs, batch["ref_logprobs"]) * mask).sum(dim=1)
        grouped = rewards.view(-1, config.group_size)
        batch["advantages"] = ops.ADVANTAGES[config.advantage](grouped, total=distributed.all_reduce_sum).reshape(-1)
        stats = {"reward": scores.mean().item(), **components, "reward_std": grouped.std(dim=1).mean().item(),
                 "zero_std_groups": float(ops.zero_std_groups(grouped)), "response_length": mask.sum(dim=1).mean().item(),
                 "eos_rate": ended.float().mean().item()}
        return batch, stats

    def update(self, rollout: Rollout, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, float]:
        """`iterations` optimizer steps on the batch (in order: each step sees every answer, so `generator` is unused)."""
        self.actor.train()
        config = self.config
        world = distributed.rank_and_world()[1]
        loss_mask = batch["loss_mask"]
        counted = distributed.all_reduce_sum(torch.stack([loss_mask.sum(), (loss_mask.sum(dim=1) > 0).float().sum()]))
        totals = ops.BatchTotals(tokens=counted[0].item(), sequences=counted[1].item(), horizon=config.max_new_tokens)
        aggregate = ops.LOSS_AGGREGATIONS[config.loss_agg]
        parts = list(torch.arange(len(rollout.response_ids)).split(config.micro_batch_size))
        old_logprobs: list[torch.Tensor] = []
        sums = {"policy_loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "entropy": 0.0}
        for iteration in range(config.iterations):
            self.optimizer.zero_grad()
            for index, rows in enumerate(parts):
                part = Rollout(rollout.prompt_ids[rows], rollout.prompt_mask[rows], rollout.response_ids[rows], rollout.response_mask[rows])
                mask = loss_mask[rows]
                with self.autocast:
                    logits = response_logits(self.actor, part, config.temperature)
                logprobs = token_logprobs(logits, part.response_ids)
                if iteration == 0:  # the policy that sampled: the first step is on-policy, its ratio exactly 1
                    old_logprobs.append(logprobs.detach())
                losses, clipped = ops.clipped_surrogate(logprobs, old_logprobs[index], batch["advantages"][rows, None],
                                                        config.clip_low, config.clip_high)
                if "ref_logprobs" in batch:
                    kl_tokens = ops.kl_k3(logprobs, batch["ref_logprobs"][rows])
                    if config.kl_in == "loss":
                        losses = losses + config.beta * kl_tokens
                    if iteration == 0:
                        sums["kl"] += (ops.kl_k1(logprobs.detach(), batch["ref_logprobs"][rows]) * part.response_mask).sum().item()
                # The parts' losses add up to the global batch's; gradients are averaged over processes, hence × world.
                loss = aggregate(losses, mask, totals) * world
                if distributed.all_reduce_sum((~torch.isfinite(loss)).float()) > 0:  # every process stops together
                    raise training.TrainingDiverged(f"GRPO loss is {'not finite' if torch.isfinite(loss) else loss.item()}; "
                                                   "stopped before that update")
                loss.backward()
                if iteration == config.iterations - 1:
                    sums["policy_loss"] += loss.item()  # averaged over processes: the global loss
                    sums["clip_fraction"] += (clipped * mask).sum().item()
                    sums["entropy"] += (entropy(logits.detach()) * mask).sum().item()
            if self.sharding:  # FSDP averaged the gradients itself (reduce-scatter)
                sharding.clip_grad_norm([self.actor], config.max_grad_norm)
            else:
                distributed.average_gradients(self.trainable)
                torch.nn.utils.clip_grad_norm_(self.trainable, config.max_grad_norm)
            self.optimizer.step()
        tokens = max(loss_mask.sum().item(), 1)
        stats = {"policy_loss": sums["policy_loss"], "clip_fraction": sums["clip_fraction"] / tokens, "entropy": sums["entropy"] / tokens}
        if "ref_logprobs" in batch:
            stats["kl"] = sums["kl"] / len(rollout.response_ids)
        return stats

    def evaluate(self, prompts: list[str]) -> dict[str, float]:
        return online.evaluate_policy(self.actor, self.reference, self.tokenizer, prompts, self.config, self.decoding, self.autocast,
                                      lambda batch, responses, ended: self.reward.score(batch, responses, ended)[0], self.judge)

    def after_step(self, stats: dict[str, float], rollouts: int) -> None:
        """Nothing adapts between steps (β is fixed)."""

    def state(self, step: int) -> dict:
        """Everything a resumed run needs, the sampling RNG of every process included (a collective call)."""
        trained = {} if self.sharding else {"actor": self.actor.state_dict(), "optimizer": self.optimizer.state_dict()}
        return {"step": step, **trained, **online.rng_states(self.device)}  # sharded: the shards beside it (online.save_state)

    def load_state(self, state: dict) -> int:
        if not self.sharding:
            self.actor.load_state_dict(state["actor"])
            self.optimizer.load_state_dict(state["optimizer"])
        online.restore_rng(state, self.device, self.config.seed)
        return state["step"]


def train_grpo(config: GRPOConfig, stage: str = "grpo") -> outputs.StageResult:
    prompts, held_out, resume_from = online.stage_inputs(config, stage)
    trainer = GRPOTrainer(config)  # every model is loaded (or refused) before --out is touched
    online.open_output(config)
    if trainer.reference is None and distributed.is_main_process():
        stderr_console.print(f"{stage}: beta 0: no reference model loaded; the KL to SFT is neither penalised nor measured, "
                             "and its alarm is off", markup=False)
    metrics = online.run(trainer, config, stage, prompts, held_out, resume_from)
    return outputs.save_stage(trainer.actor, trainer.tokenizer, config, stage, metrics)


def train_rloo(config: RLOOConfig) -> outputs.StageResult:
    return train_grpo(config, stage="rloo")
