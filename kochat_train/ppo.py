"""PPO: actor and frozen reference from SFT, critic from the RM, frozen RM as reward; kochat's own loop.

One step = one rollout batch: generate, score, per-token KL penalty, GAE, whitened advantages,
then `ppo_epochs` passes of minibatch updates with clipped policy and value losses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from kochat_data.progress import stderr_console
from kochat_train import devices, distributed, online, outputs, sharding, stage_models, training
from kochat_train import objectives as ops
from kochat_train.lora import merge_lora
from kochat_train.rewards import RewardScorer
from kochat_train.rm import ScalarRewardModel
from kochat_train.rollout import (
    Rollout,
    decoding_config,
    entropy,
    generate,
    response_logits,
    response_texts,
    token_logprobs,
)
from kochat_train.sources import init_reward_model, load_reward_model
from kochat_train.stage_configs import PPOConfig

# A custom reward (tests, experiments): response ids and mask (B, R) → one score per row (B,).
ScoreFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]



class PPOTrainer:
    """Holds the four models (three with LoRA: the reference is the actor without it) and the optimizer; `rollout` samples
    and scores a batch, `update` learns from it."""

    headline = "rm_score"

    def __init__(self, config: PPOConfig, score_fn: ScoreFunction | None = None):
        self.config = config
        device = devices.resolve_device(config.device)
        self.device = torch.device(device)
        self.tokenizer = stage_models.stage_tokenizer(config, config.sft)
        self.actor = stage_models.trained_causal_lm(config, config.sft, self.tokenizer)
        self.sharding = sharding.is_sharded(self.actor)  # every process then evaluates: a sharded forward is collective
        # Rewards are read from text (`RewardScorer`), so the RM and the judge may have tokenizers of their own.
        self.reward_model = RewardScorer(Path(config.rm), device)
        self.judge = RewardScorer(Path(config.judge), device) if config.judge else None
        self.critic_source = config.rm if self._rm_can_be_critic() else config.sft
        dtype = devices.trained_dtype(config)
        where = stage_models.placement(config, self.critic_source)
        load = load_reward_model if self.critic_source == config.rm else init_reward_model
        self.critic = ScalarRewardModel(stage_models.prepared(load(self.critic_source, self.tokenizer, dtype, where), where))
        stage_models.maybe_apply_lora(self.actor, config)
        stage_models.maybe_apply_lora(self.critic.model, config, heads=("score",))
        for model in (self.actor, self.critic, self.reward_model.model, self.judge and self.judge.model):
            if model is not None:
                stage_models.disable_dropout(model)  # log-probs of the rollout and of the update must come from the same function
                if not sharding.is_sharded(model):  # a sharded model's placement is FSDP's
                    model.to(self.device)
        self.reference = online.frozen_reference(config, self.actor, self.tokenizer, device)
        distributed.broadcast_parameters([self.actor, self.critic])
        groups = [[p for p in model.parameters() if p.requires_grad] for model in (self.actor, self.critic)]
        self.trainable = [p for group in groups for p in group]
        self.trained = torch.nn.ModuleDict({"actor": self.actor, "critic": self.critic})  # what the optimizer steps
        critic_lr = config.critic_learning_rate or 2 * config.learning_rate
        self.optimizer = torch.optim.AdamW([{"params": groups[0], "lr": config.learning_rate}, {"params": groups[1], "lr": critic_lr}],
                                           weight_decay=config.weight_decay)
        self.score_fn = score_fn
        self.kl_coef = config.kl_coef
        self.decoding = decoding_config(self.tokenizer, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                        top_k=config.top_k, top_p=config.top_p)
        # Frozen models may be bf16 on CUDA; the trained ones stay fp32 under bf16 autocast (--precision).
        self.autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=devices.uses_bf16(config, device))

    def _rm_can_be_critic(self) -> bool:
        """A critic reads the policy's tokens and gives a value per token: only a decoder RM with the policy's tokenizer can."""
        rm = self.reward_model
        return not rm.model.reads_pairs and rm.tokenizer.get_vocab() == self.tokenizer.get_vocab()

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> tuple[Rollout, dict[str, torch.Tensor], dict[str, float]]:
        self.actor.eval()
        with self.autocast:
            return self._rollout(prompts)

    def _rollout(self, prompts: list[str]) -> tuple[Rollout, dict[str, torch.Tensor], dict[str, float]]:
        started = time.perf_counter()
        rollout = generate(self.actor, self.tokenizer, prompts, self.config.max_length, self.decoding)
        generate_seconds = time.perf_counter() - started
        mask = rollout.response_mask.float()
        temperature = self.config.temperature
        logits = response_logits(self.actor, rollout, temperature)
        logprobs = token_logprobs(logits, rollout.response_ids)
        ref_logprobs = token_logprobs(response_logits(self.reference, rollout, temperature), rollout.response_ids)
        width = rollout.response_ids.shape[1]
        values = self.critic.token_values(rollout.input_ids, rollout.attention_mask)[:, -width - 1 : -1]
        if self.score_fn is not None:
            scores = self.score_fn(rollout.response_ids, rollout.response_mask).float()
        else:
            scores = torch.tensor(self.reward_model.score(prompts, response_texts(self.tokenizer, rollout)), device=self.device)
        ended = rollout.ended
        penalised = scores - self.config.missing_eos_penalty * (~ended).float()
        rewards = ops.kl_penalised_rewards(penalised, logprobs, ref_logprobs, mask, self.kl_coef)
        advantages, returns = ops.gae(rewards, values * mask, mask, self.config.gamma, self.config.lam)
        whitened = ops.whiten(advantages, mask, total=distributed.all_reduce_sum)  # over the global batch under torchrun
        batch = {"logprobs": logprobs, "values": values * mask, "advantages": whitened, "returns": returns, "scores": scores}
        kl = (ops.kl_k1(logprobs, ref_logprobs) * mask).sum(dim=1)
        stats = {
            "rm_score": scores.mean().item(),
            "kl": kl.mean().item(),
            "total_reward": (rewards * mask).sum(dim=1).mean().item(),
            "entropy": ops.masked_mean(entropy(logits), mask).item(),
            "response_length": mask.sum(dim=1).mean().item(),
            "eos_rate": ended.float().mean().item(),
            "generated_tokens_per_second": mask.sum().item() / generate_seconds,
            "kl_coef": self.kl_coef,
        }
        return rollout, batch, stats

    def evaluate(self, prompts: list[str]) -> dict[str, float]:
        return online.evaluate_policy(self.actor, self.reference, self.tokenizer, prompts, self.config, self.decoding, self.autocast,
                                      lambda batch, responses, ended: self.reward_model.score(batch, responses), self.judge)

    def update(self, rollout: Rollout, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, float]:
        self.actor.train()
        self.critic.train()
        config, size = self.config, len(rollout.response_ids)
        world = distributed.rank_and_world()[1]
        totals: dict[str, float] = {}
        updates = 0
        for _ in range(config.ppo_epochs):
            for rows in torch.randperm(size, generator=generator).split(config.mini_batch_size):
                part = Rollout(rollout.prompt_ids[rows], rollout.prompt_mask[rows], rollout.response_ids[rows], rollout.response_mask[rows])
                mask = part.response_mask.float()
                width = part.response_ids.shape[1]
                with self.autocast:
                    logprobs = token_logprobs(response_logits(self.actor, part, config.temperature), part.response_ids)
                    values = self.critic.token_values(part.input_ids, part.attention_mask)[:, -width - 1 : -1]
                policy_loss, clip_fraction = ops.clipped_policy_loss(
                    logprobs, batch["logprobs"][rows], batch["advantages"][rows], mask, config.clip_range)
                value_loss = ops.clipped_value_loss(values, batch["values"][rows], batch["returns"][rows], mask, config.value_clip_range)
                # Token-weighted over the global mini-batch, as one process would weigh it, once
                # gradients are averaged over processes (exactly 1 without torchrun).
                tokens = mask.sum()
                share = tokens * world / distributed.all_reduce_sum(tokens).clamp(min=1)
                loss = (policy_loss + config.value_coef * value_loss) * share
                if distributed.all_reduce_sum((~torch.isfinite(loss)).float()) > 0:  # every process stops together
                    raise training.TrainingDiverged(f"PPO loss is {'not finite' if torch.isfinite(loss) else loss.item()}; stopped before that update")
                self.optimizer.zero_grad()
                loss.backward()
                if self.sharding:  # FSDP averaged the gradients itself (reduce-scatter)
                    sharding.clip_grad_norm([self.actor, self.critic], config.max_grad_norm)
                else:
                    distributed.average_gradients(self.trainable)
                    torch.nn.utils.clip_grad_norm_(self.trainable, config.max_grad_norm)
                self.optimizer.step()
                step_stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                              "clip_fraction": clip_fraction.item(), "approx_kl": ops.approx_kl(logprobs.detach(), batch["logprobs"][rows], mask).item()}
                for key, value in step_stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        return {key: value / updates for key, value in totals.items()}

    def after_step(self, stats: dict[str, float], rollouts: int) -> None:
        self.adapt_kl(stats["kl"], rollouts)

    def adapt_kl(self, observed_kl: float, rollouts: int) -> None:
        """Move β after a step of `rollouts` responses (the global batch: every process's together)."""
        if self.config.target_kl > 0:
            self.kl_coef = ops.adaptive_kl_coef(self.kl_coef, observed_kl, self.config.target_kl, rollouts, self.config.kl_horizon)

    def state(self, step: int) -> dict:
        """Everything a resumed run needs, the sampling RNG of every process included (a collective call)."""
        trained = {} if self.sharding else {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                                            "optimizer": self.optimizer.state_dict()}
        return {"step": step, "kl_coef": self.kl_coef, **trained, **online.rng_states(self.device)}  # sharded: see online.save_state

    def load_state(self, state: dict) -> int:
        if not self.sharding:
            self.actor.load_state_dict(state["actor"])
            self.critic.load_state_dict(state["critic"])
            self.optimizer.load_state_dict(state["optimizer"])
        online.restore_rng(state, self.device, self.config.seed)
        self.kl_coef = state["kl_coef"]
        return state["step"]


def train_ppo(config: PPOConfig, score_fn: ScoreFunction | None = None) -> outputs.StageResult:
    prompts, held_out, resume_from = online.stage_inputs(config, "ppo")
    trainer = PPOTrainer(config, score_fn)  # every model is loaded (or refused) before --out is touched
    online.open_output(config)
    if trainer.critic_source != config.rm and distributed.is_main_process():
        stderr_console.print(f"critic: from {config.sft} with a new value head ({config.rm} cannot serve as a critic: it does not "
                             "read the policy's tokens one by one)", markup=False)
    metrics = online.run(trainer, config, "ppo", prompts, held_out, resume_from)
    result = outputs.save_stage(trainer.actor, trainer.tokenizer, config, "ppo", metrics)
    merge_lora(trainer.critic.model)
    outputs.save_model(trainer.critic.model, Path(config.out) / "critic")
    return result
