"""PPO: actor and frozen reference from SFT, critic from the RM, frozen RM as reward; kochat's own loop.

One step = one rollout batch: generate, score, per-token KL penalty, GAE, whitened advantages,
then `ppo_epochs` passes of minibatch updates with clipped policy and value losses.
"""

from __future__ import annotations

import functools
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import set_seed

from kochat_data.errors import UsageError
from kochat_data.atomic import check_writable
from kochat_data.progress import progress_bar, stderr_console
from kochat_data.schema import Kind
from kochat_train import objectives as ops
from kochat_train import runtime
from kochat_train.lora import merge_lora
from kochat_train.rm import ScalarRewardModel
from kochat_train.rollout import Rollout, decoding_config, entropy, generate, response_logits, response_texts, token_logprobs
from kochat_train.rewards import RewardScorer
from kochat_train.sources import inference_dtype, init_reward_model, load_causal_lm, load_reward_model, load_tokenizer
from kochat_train.stage_configs import PPOConfig
from kochat_train.tracking import Tracker, closing_tracker, open_tracker, sample_rows

# A custom reward (tests, experiments): response ids and mask (B, R) → one score per row (B,).
ScoreFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

STATE_FILE = "ppo_state.pt"
_RANK_SEED_STRIDE = 1_000_003  # keeps the sampling seeds of different processes apart


class PPOTrainer:
    """Holds the four models and the optimizer; `rollout` samples and scores a batch, `update` learns from it."""

    def __init__(self, config: PPOConfig, score_fn: ScoreFunction | None = None):
        self.config = config
        device = runtime.resolve_device(config.device)
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(config.sft)
        self.actor = load_causal_lm(config.sft, self.tokenizer)
        self.reference = load_causal_lm(config.sft, self.tokenizer, dtype=inference_dtype(device)).requires_grad_(False)
        # Rewards are read from text (`RewardScorer`), so the RM and the judge may have tokenizers of their own.
        self.reward_model = RewardScorer(Path(config.rm), device)
        self.judge = RewardScorer(Path(config.judge), device) if config.judge else None
        self.critic_source = config.rm if self._rm_can_be_critic() else config.sft
        self.critic = ScalarRewardModel(load_reward_model(config.rm, self.tokenizer) if self.critic_source == config.rm
                                        else init_reward_model(config.sft, self.tokenizer))
        runtime.maybe_apply_lora(self.actor, config)
        runtime.maybe_apply_lora(self.critic.model, config, heads=("score",))
        for model in (self.actor, self.reference, self.critic, self.reward_model.model, self.judge and self.judge.model):
            if model is not None:
                runtime.disable_dropout(model)  # log-probs of the rollout and of the update must come from the same function
                model.to(self.device)
        self.reference.eval()
        runtime.broadcast_parameters([self.actor, self.critic])
        groups = [[p for p in model.parameters() if p.requires_grad] for model in (self.actor, self.critic)]
        self.trainable = [p for group in groups for p in group]
        critic_lr = config.critic_learning_rate or 2 * config.learning_rate
        self.optimizer = torch.optim.AdamW([{"params": groups[0], "lr": config.learning_rate}, {"params": groups[1], "lr": critic_lr}],
                                           weight_decay=config.weight_decay)
        self.score_fn = score_fn
        self.kl_coef = config.kl_coef
        self.decoding = decoding_config(self.tokenizer, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                        top_k=config.top_k, top_p=config.top_p)
        # Frozen models may be bf16 on CUDA; the trained ones stay fp32 under bf16 autocast (--precision).
        self.autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=runtime.uses_bf16(config, device))

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
        ended = rollout.ended_with_eos(self.tokenizer.eos_token_id)
        penalised = scores - self.config.missing_eos_penalty * (~ended).float()
        rewards = ops.kl_penalised_rewards(penalised, logprobs, ref_logprobs, mask, self.kl_coef)
        advantages, returns = ops.gae(rewards, values * mask, mask, self.config.gamma, self.config.lam)
        whitened = ops.whiten(advantages, mask, total=runtime.all_reduce_sum)  # over the global batch under torchrun
        batch = {"logprobs": logprobs, "values": values * mask, "advantages": whitened, "returns": returns, "scores": scores}
        kl = ((logprobs - ref_logprobs) * mask).sum(dim=1)
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

    @torch.no_grad()
    def evaluate(self, prompts: list[str]) -> dict[str, float]:
        """Held-out prompts answered as in training: mean proxy score, judge score (if any), KL and length.

        The sampling noise is the same at every evaluation and the training RNG is left as it was,
        so evaluating changes nothing about the run.
        """
        self.actor.eval()
        totals: dict[str, float] = {}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), self.autocast:
            torch.manual_seed(self.config.seed)
            for start in range(0, len(prompts), self.config.batch_size):
                rollout = generate(self.actor, self.tokenizer, prompts[start : start + self.config.batch_size], self.config.max_length, self.decoding)
                mask = rollout.response_mask.float()
                logprobs = token_logprobs(response_logits(self.actor, rollout, self.config.temperature), rollout.response_ids)
                ref_logprobs = token_logprobs(response_logits(self.reference, rollout, self.config.temperature), rollout.response_ids)
                batch, responses = prompts[start : start + self.config.batch_size], response_texts(self.tokenizer, rollout)
                sums = {"eval_proxy_score": sum(self.reward_model.score(batch, responses)),
                        "eval_kl": ((logprobs - ref_logprobs) * mask).sum().item(), "eval_response_length": mask.sum().item()}
                if self.judge is not None:
                    sums["eval_judge_score"] = sum(self.judge.score(batch, responses))
                for key, value in sums.items():
                    totals[key] = totals.get(key, 0.0) + value
        return {key: value / len(prompts) for key, value in totals.items()}

    def update(self, rollout: Rollout, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, float]:
        self.actor.train()
        self.critic.train()
        config, size = self.config, len(rollout.response_ids)
        world = runtime.rank_and_world()[1]
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
                share = tokens * world / runtime.all_reduce_sum(tokens).clamp(min=1)
                loss = (policy_loss + config.value_coef * value_loss) * share
                if runtime.all_reduce_sum((~torch.isfinite(loss)).float()) > 0:  # every process stops together
                    raise runtime.TrainingDiverged(f"PPO loss is {'not finite' if torch.isfinite(loss) else loss.item()}; stopped before that update")
                self.optimizer.zero_grad()
                loss.backward()
                runtime.average_gradients(self.trainable)
                torch.nn.utils.clip_grad_norm_(self.trainable, config.max_grad_norm)
                self.optimizer.step()
                step_stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                              "clip_fraction": clip_fraction.item(), "approx_kl": ops.approx_kl(logprobs.detach(), batch["logprobs"][rows], mask).item()}
                for key, value in step_stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        return {key: value / updates for key, value in totals.items()}

    def adapt_kl(self, observed_kl: float, rollouts: int) -> None:
        """Move β after a step of `rollouts` responses (the global batch: every process's together)."""
        if self.config.target_kl > 0:
            self.kl_coef = ops.adaptive_kl_coef(self.kl_coef, observed_kl, self.config.target_kl, rollouts, self.config.kl_horizon)

    def state(self, step: int) -> dict:
        """Everything a resumed run needs; the sampling RNG of every process (a collective call)."""
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"step": step, "kl_coef": self.kl_coef, "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "optimizer": self.optimizer.state_dict(), "torch_rng": runtime.gather_objects(torch.get_rng_state()),
                "cuda_rng": runtime.gather_objects(cuda_rng)}

    def load_state(self, state: dict) -> int:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        rank, world = runtime.rank_and_world()
        if len(state["torch_rng"]) == world:
            torch.set_rng_state(state["torch_rng"][rank])
            cuda_rng = state.get("cuda_rng", [None] * world)[rank]
            if cuda_rng is not None and self.device.type == "cuda":  # a GPU run must not replay its start's sampling noise
                torch.cuda.set_rng_state(cuda_rng, self.device)
        else:  # resumed on another number of processes: fresh, still seeded, sampling streams
            torch.manual_seed(self.config.seed + _RANK_SEED_STRIDE * rank + state["step"])  # seeds CUDA too
        self.kl_coef = state["kl_coef"]
        return state["step"]


def prompt_batch(prompts: list[str], step: int, batch_size: int, seed: int) -> list[str]:
    """The prompts of one step: epochs of seeded permutations laid end to end, so any step is recomputable."""
    positions = (divmod(position, len(prompts)) for position in range(step * batch_size, (step + 1) * batch_size))
    return [prompts[_epoch_order(len(prompts), seed + epoch)[index]] for epoch, index in positions]


@functools.lru_cache(maxsize=2)
def _epoch_order(size: int, seed: int) -> list[int]:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()


def ppo_steps(prompts: int, epochs: float, global_batch: int) -> int:
    """Steps that make `epochs` passes over the prompts when each step takes `global_batch` of them."""
    return math.ceil(prompts * epochs / global_batch)


def train_ppo(config: PPOConfig, score_fn: ScoreFunction | None = None) -> runtime.StageResult:
    data = runtime.load_stage_data(config.data, Kind.PPO, ["prompt"], "kochat train ppo")
    prompts = list(runtime.require_rows(data, "train", config.data, Kind.PPO, "nothing to train on")["prompt"])
    held_out = list(runtime.require_rows(data, "eval", config.data, Kind.PPO, "--eval-every needs held-out prompts")["prompt"]
                    if config.eval_every else [])[: config.eval_prompts]
    resume_from = _last_state(Path(config.out)) if config.resume else None
    if config.resume and resume_from is None:
        raise UsageError(f"{config.out}: nothing to resume (no {STATE_FILE} under {Path(config.out) / runtime.CHECKPOINTS})")
    if not config.resume:
        check_writable(Path(config.out), config.overwrite)
    runtime.init_distributed(runtime.resolve_device(config.device))
    rank, world = runtime.rank_and_world()
    steps = config.max_steps if config.max_steps > 0 else ppo_steps(len(prompts), config.epochs, config.batch_size * world)
    set_seed(config.seed)
    trainer = PPOTrainer(config, score_fn)  # every model is loaded (or refused) before --out is touched
    if not config.resume:
        runtime.prepare_output(config)
    if trainer.critic_source != config.rm and runtime.is_main_process():
        stderr_console.print(f"critic: from {config.sft} with a new value head ({config.rm} cannot serve as a critic: it does not "
                             "read the policy's tokens one by one)", markup=False)
    if config.truncates_sampling() and runtime.is_main_process():
        stderr_console.print(f"warning: top_k={config.top_k}, top_p={config.top_p}: rollouts come from a truncated distribution "
                             "while PPO optimises the full (tempered) one, so its updates are off-policy", markup=False)
    if world > 1:  # the same weights everywhere, but each process samples its own responses
        torch.manual_seed(config.seed + _RANK_SEED_STRIDE * rank)
    out = Path(config.out)
    start = 0
    if resume_from is not None:
        # RNG states must stay CPU tensors; load_state_dict moves the weights to the models' device.
        start = trainer.load_state(torch.load(resume_from, map_location="cpu", weights_only=False))
        if runtime.is_main_process():
            runtime.drop_metrics_after(out / runtime.METRICS_FILE, start)
            (out / runtime.STAGE_FILE).unlink(missing_ok=True)
    runtime.write_config(out, "ppo", config)
    generator = torch.Generator().manual_seed(config.seed)
    started, last = time.perf_counter(), {}
    tracker = open_tracker(config.report_to, out, "ppo", config.to_json()) if runtime.is_main_process() else None
    with progress_bar(enabled=runtime.is_main_process()) as progress, closing_tracker(tracker):
        task = progress.add_task("train ppo", total=steps, completed=start)
        held_out_scores = _log_evaluation(trainer, held_out, out, 0, tracker) if config.eval_every and start == 0 else {}
        for step in range(start, steps):
            generator.manual_seed(config.seed * 100_003 + step)
            # Each process takes its own slice of the step's global batch of prompts.
            mine = prompt_batch(prompts, step, config.batch_size * world, config.seed)[rank * config.batch_size :][: config.batch_size]
            rollout, batch, stats = trainer.rollout(mine)
            try:
                stats.update(trainer.update(rollout, batch, generator))
            except runtime.TrainingDiverged as err:
                last_good = _last_state(out)
                kept = f"last good checkpoint: {last_good.parent} (continue with --resume)" if last_good else "no checkpoint was saved yet"
                raise runtime.TrainingDiverged(f"{err} at step {step + 1}; {kept}") from None
            stats = runtime.mean_over_processes(stats)
            trainer.adapt_kl(stats["kl"], rollouts=config.batch_size * world)
            last = {"stage": "ppo", "step": step + 1, **stats}
            if runtime.is_main_process():
                runtime.append_metrics(out / runtime.METRICS_FILE, last)
            if tracker:
                tracker.log(stats, step + 1)
                if step % config.logging_steps == 0:  # what the scores mean: a few of this step's answers
                    tracker.log_samples(sample_rows(mine, response_texts(trainer.tokenizer, rollout), batch["scores"].tolist()), step + 1)
            progress.update(task, completed=step + 1,
                            description=f"train ppo · score {stats['rm_score']:.3f} · kl {stats['kl']:.3f}")
            # Logged before the checkpoint of this step: a run resumed from it never evaluates this step again.
            if config.eval_every and ((step + 1) % config.eval_every == 0 or step + 1 == steps):
                held_out_scores = _log_evaluation(trainer, held_out, out, step + 1, tracker)
            if (step + 1) % config.save_steps == 0 or step + 1 == steps:
                state = trainer.state(step + 1)
                if runtime.is_main_process():
                    _save_state(out, state, config.save_total_limit)
    last.update(held_out_scores)
    last["wall_seconds"] = round(time.perf_counter() - started, 1)
    result = runtime.save_stage(trainer.actor, trainer.tokenizer, config, "ppo", last)
    merge_lora(trainer.critic.model)
    if runtime.is_main_process():
        trainer.critic.model.save_pretrained(out / "critic")
    return result


def _log_evaluation(trainer: PPOTrainer, prompts: list[str], out: Path, step: int, tracker: Tracker | None) -> dict[str, float]:
    """Over-optimisation watch: rank 0 answers the held-out prompts and logs the scores with the step."""
    scores = trainer.evaluate(prompts) if runtime.is_main_process() else {}
    if scores:
        runtime.append_metrics(out / runtime.METRICS_FILE, {"stage": "ppo", "step": step, **scores})
        if tracker:
            tracker.log(scores, step)
    runtime.barrier()
    return scores


def _save_state(out: Path, state: dict, keep: int) -> None:
    directory = out / runtime.CHECKPOINTS / f"checkpoint-{state['step']}"
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (STATE_FILE + ".partial")
    torch.save(state, partial)
    partial.rename(directory / STATE_FILE)  # a kill mid-write leaves the previous checkpoint as the last one
    for old in _checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in (out / runtime.CHECKPOINTS).glob("checkpoint-*") if (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def _last_state(out: Path) -> Path | None:
    found = _checkpoints(out)
    return found[-1] / STATE_FILE if found else None
