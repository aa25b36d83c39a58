"""The loop every online RL stage (PPO, GRPO) runs: prompt batches, rollouts and updates, held-out evaluations
with the reward-hacking alarms, metrics, progress, checkpoints that resume exactly, and the saved policy.

A trainer brings `rollout(prompts) → (rollout, batch, stats)`, `update(rollout, batch, generator) → stats`,
`evaluate(prompts) → stats`, `after_step(stats, rollouts)`, `state(step)`, `load_state(state) → step`, and
its `actor`, `tokenizer` and `headline` (the stats key its progress bar shows).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from kochat_data.atomic import check_writable
from kochat_data.errors import KochatError, UsageError
from kochat_data.progress import progress_bar, stderr_console
from kochat_data.schema import Kind
from kochat_train import (
    devices,
    distributed,
    interrupts,
    outputs,
    sharding,
    stage_data,
    stage_models,
    training,
)
from kochat_train.alarms import Thresholds, answer_signature, hacking_alarms
from kochat_train.lora import WithoutLora
from kochat_train.objectives import kl_k1
from kochat_train.rewards import RewardScorer
from kochat_train.rollout import (
    generate,
    response_logits,
    response_texts,
    token_logprobs,
)
from kochat_train.sources import load_causal_lm
from kochat_train.stage_configs import OnlineRLConfig
from kochat_train.template import Prompt
from kochat_train.tracking import Tracker, closing_tracker, open_tracker, sample_rows

RANK_SEED_STRIDE = 1_000_003  # keeps the sampling seeds of different processes apart

# prompts, responses, ended → one reward per response: what the policy is optimised for
Proxy = Callable[[Sequence[str], Sequence[str], Sequence[bool]], Sequence[float]]


class RewardHacking(KochatError):
    """--stop-on-hacking: an alarm fired; the run stopped with its last checkpoint kept (exit 4)."""

    exit_code = 4


def prompt_batch(prompts: list[str], step: int, batch_size: int, seed: int) -> list[str]:
    """The prompts of one step: epochs of seeded permutations laid end to end, so any step is recomputable."""
    positions = (divmod(position, len(prompts)) for position in range(step * batch_size, (step + 1) * batch_size))
    return [prompts[_epoch_order(len(prompts), seed + epoch)[index]] for epoch, index in positions]


@functools.lru_cache(maxsize=2)
def _epoch_order(size: int, seed: int) -> list[int]:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()


def online_steps(prompts: int, epochs: float, global_batch: int) -> int:
    """Steps that make `epochs` passes over the prompts when each step takes `global_batch` of them."""
    return math.ceil(prompts * epochs / global_batch)


@torch.no_grad()
def evaluate_policy(actor, reference, tokenizer, prompts: list[str], config: OnlineRLConfig, decoding, autocast,
                    proxy: Proxy, judge: RewardScorer | None) -> dict[str, float]:
    """Held-out prompts answered as in training: mean reward, judge score (if any), KL (if a reference), length,
    and what the alarms watch (`answer_signature`).

    The sampling noise is the same at every evaluation and the training RNG is left as it was,
    so evaluating changes nothing about the run.
    """
    actor.eval()
    device = next(actor.parameters()).device
    totals: dict[str, float] = {}
    answers: list[str] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
        torch.manual_seed(config.seed)
        for start in range(0, len(prompts), config.eval_batch_size):
            batch = prompts[start : start + config.eval_batch_size]
            rollout = generate(actor, tokenizer, batch, config.max_length, decoding)
            mask = rollout.response_mask.float()
            responses = response_texts(tokenizer, rollout)
            ended = rollout.ended.tolist()
            sums = {"eval_proxy_score": sum(proxy(batch, responses, ended)), "eval_response_length": mask.sum().item()}
            if reference is not None:
                logprobs = token_logprobs(response_logits(actor, rollout, config.temperature), rollout.response_ids)
                ref_logprobs = token_logprobs(response_logits(reference, rollout, config.temperature), rollout.response_ids)
                sums["eval_kl"] = (kl_k1(logprobs, ref_logprobs) * mask).sum().item()
            if judge is not None:
                sums["eval_judge_score"] = sum(judge.score(batch, responses))
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
            answers += responses
    return {**{key: value / len(prompts) for key, value in totals.items()}, **answer_signature(answers)}


def run(trainer, config: OnlineRLConfig, stage: str, prompts: list[str], held_out: list[str], resume_from: Path | None) -> dict[str, Any]:
    """Train from step 0, or from the checkpoint `resume_from`; returns the last step's metrics with the final
    held-out evaluation and every alarm that fired."""
    rank, world = distributed.rank_and_world()
    steps = config.max_steps if config.max_steps > 0 else online_steps(len(prompts), config.epochs, config.batch_size * world)
    if world > 1:  # the same weights everywhere, but each process samples its own responses
        torch.manual_seed(config.seed + RANK_SEED_STRIDE * rank)
    out = Path(config.out)
    start = 0
    if resume_from is not None:
        # RNG states must stay CPU tensors; load_state_dict moves the weights to the models' device.
        start = trainer.load_state(torch.load(resume_from, map_location="cpu", weights_only=False))
        if trainer.sharding:
            sharding.load_shards(resume_from.parent, trainer.trained, trainer.optimizer)
        if distributed.is_main_process():
            outputs.drop_metrics_after(out / outputs.METRICS_FILE, start)
            (out / outputs.STAGE_FILE).unlink(missing_ok=True)
    outputs.write_config(out, stage, config)
    if not config.eval_every and distributed.is_main_process():
        stderr_console.print(f"{stage}: reward-hacking alarms off (--eval-every 0: no held-out answers to watch)", markup=False)
    watch = _Watch(trainer, config, stage, held_out, out)
    generator = torch.Generator().manual_seed(config.seed)
    started, last = time.perf_counter(), {}
    tracker = open_tracker(config.report_to, out, stage, config.to_json()) if distributed.is_main_process() else None
    with progress_bar(enabled=distributed.is_main_process()) as progress, closing_tracker(tracker), interrupts.steps():
        task = progress.add_task(f"train {stage}", total=steps, completed=start)
        if config.eval_every:
            watch.begin(start, tracker)
        for step in range(start, steps):
            generator.manual_seed(config.seed * 100_003 + step)
            # Each process takes its own slice of the step's global batch of prompts.
            mine = prompt_batch(prompts, step, config.batch_size * world, config.seed)[rank * config.batch_size :][: config.batch_size]
            rollout, batch, stats = trainer.rollout(mine)
            try:
                stats.update(trainer.update(rollout, batch, generator))
            except training.TrainingDiverged as err:
                raise training.TrainingDiverged(f"{err} at step {step + 1}; {_kept(out, stage)}") from None
            stats = distributed.mean_over_processes(stats)
            trainer.after_step(stats, rollouts=len(rollout.response_ids) * world)
            last = {"stage": stage, "step": step + 1, **stats}
            if distributed.is_main_process():
                outputs.append_metrics(out / outputs.METRICS_FILE, last)
            if tracker:
                tracker.log(stats, step + 1)
                if step % config.logging_steps == 0:  # what the scores mean: a few of this step's answers
                    copies = len(rollout.response_ids) // len(mine)
                    rows = [prompt for prompt in mine for _ in range(copies)]
                    tracker.log_samples(sample_rows(rows, response_texts(trainer.tokenizer, rollout), batch["scores"].tolist()), step + 1)
            kl = f" · kl {stats['kl']:.3f}" if "kl" in stats else ""  # none without a reference (GRPO's --beta 0)
            progress.update(task, completed=step + 1, description=f"train {stage} · {trainer.headline} {stats[trainer.headline]:.3f}{kl}")
            # Evaluated before the checkpoint of this step: a run resumed from it never evaluates this step again.
            alarms = watch.check(step + 1, tracker) if config.eval_every and ((step + 1) % config.eval_every == 0 or step + 1 == steps) else []
            stopping = interrupts.stop_requested()
            if (step + 1) % config.save_steps == 0 or step + 1 == steps or (alarms and config.stop_on_hacking) or stopping:
                save_state(out, stage, trainer, step + 1, config.save_total_limit)
            if alarms and config.stop_on_hacking:
                raise RewardHacking(f"{stage}: stopped at step {step + 1} (--stop-on-hacking): {alarms[0]}; {_kept(out, stage)}")
            if stopping:
                raise interrupts.stopped(stage, out, step + 1)
    last.update(watch.scores)
    if watch.fired:
        last["alarms"] = list(watch.fired.values())
    last["wall_seconds"] = round(time.perf_counter() - started, 1)
    return last


class _Watch:
    """The held-out evaluations: the first one (the starting model) is the baseline the alarms compare with."""

    def __init__(self, trainer, config: OnlineRLConfig, stage: str, prompts: list[str], out: Path):
        self.trainer, self.config, self.stage, self.prompts, self.out = trainer, config, stage, prompts, out
        self.scores: dict[str, float] = {}
        self.baseline: dict[str, float] = {}
        self.fired: dict[str, str] = {}  # each kind's first warning, in order

    def begin(self, start: int, tracker: Tracker | None) -> None:
        if start == 0:
            self.baseline = self._evaluate(0, tracker)
        else:  # resumed: the start's evaluation and the alarms so far are in metrics.jsonl
            logged_by_rank_0 = _logged_watch(self.out / outputs.METRICS_FILE) if distributed.is_main_process() else None
            self.baseline, logged = distributed.gather_objects(logged_by_rank_0)[0]
            for step, alarms in logged:
                self._keep(step, alarms, show=False)

    def check(self, step: int, tracker: Tracker | None) -> list[str]:
        """The alarms that fire now; each kind's first warning is printed and kept."""
        scores = self._evaluate(step, tracker)
        self.scores = scores or self.scores
        alarms = hacking_alarms(self.baseline, scores, Thresholds.of(self.config)) if scores and self.baseline else {}
        alarms = distributed.gather_objects(alarms)[0]  # rank 0 evaluates; every process stops together
        self._keep(step, alarms, show=True)
        if alarms and distributed.is_main_process():
            outputs.append_metrics(self.out / outputs.METRICS_FILE, {"stage": self.stage, "step": step, "alarms": alarms})
        return list(alarms.values())

    def _keep(self, step: int, alarms: dict[str, str], show: bool) -> None:
        for kind, alarm in alarms.items():
            if kind not in self.fired:
                self.fired[kind] = f"warning: {self.stage} step {step}: {alarm}"
                if show and distributed.is_main_process():
                    stderr_console.print(self.fired[kind], markup=False)

    def _evaluate(self, step: int, tracker: Tracker | None) -> dict[str, float]:
        """Rank 0 answers the held-out prompts and logs the scores with the step; with a sharded policy every process
        answers them alike (its forwards are collective)."""
        everyone = getattr(self.trainer, "sharding", False)
        scores = self.trainer.evaluate(self.prompts) if everyone or distributed.is_main_process() else {}
        if scores and distributed.is_main_process():
            outputs.append_metrics(self.out / outputs.METRICS_FILE, {"stage": self.stage, "step": step, **scores})
            if tracker:
                tracker.log(scores, step)
        distributed.barrier()
        return scores


def _logged_watch(path: Path) -> tuple[dict[str, float], list[tuple[int, dict[str, str]]]]:
    """The starting model's held-out evaluation and the alarms of each step, as metrics.jsonl has them."""
    baseline, alarms = {}, []
    for entry in map(json.loads, path.read_text(encoding="utf-8").splitlines()):
        if entry.get("step") == 0 and "eval_median_eojeol" in entry:
            baseline = {key: value for key, value in entry.items() if key.startswith("eval_")}
        if "alarms" in entry:
            alarms.append((entry["step"], entry["alarms"]))
    return baseline, alarms


def save_state(out: Path, stage: str, trainer, step: int, keep: int) -> None:
    """The checkpoint of `step` (every process calls this): the trainer's state in one file written by rank 0, and
    a sharded trainer's weights and AdamW state as the shards each process holds (`sharding.save_shards`), nothing
    gathered. The state file is written last: a kill mid-write leaves the previous checkpoint as the last one."""
    directory = out / outputs.CHECKPOINTS / f"checkpoint-{step}"
    state = trainer.state(step)
    if trainer.sharding:
        sharding.save_shards(directory, trainer.trained, trainer.optimizer)
    if distributed.is_main_process():
        directory.mkdir(parents=True, exist_ok=True)
        name = state_file(stage)
        partial = directory / (name + ".partial")
        torch.save(state, partial)
        partial.rename(directory / name)
        for old in checkpoints(out, stage)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def state_file(stage: str) -> str:
    return f"{stage}_state.pt"


def checkpoints(out: Path, stage: str) -> list[Path]:
    found = [p for p in (out / outputs.CHECKPOINTS).glob("checkpoint-*") if (p / state_file(stage)).exists()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def last_state(out: Path, stage: str) -> Path | None:
    found = checkpoints(out, stage)
    return found[-1] / state_file(stage) if found else None


def _kept(out: Path, stage: str) -> str:
    last = last_state(out, stage)
    return f"last good checkpoint: {last.parent} (continue with --resume)" if last else "no checkpoint was saved yet"


def stage_inputs(config: OnlineRLConfig, stage: str) -> tuple[list[Prompt], list[Prompt], Path | None]:
    """The train prompts, the held-out ones (--eval-every) and the checkpoint to resume from; --out is checked,
    torchrun's group joined and the seed set, and nothing is written yet (the models load next)."""
    data = stage_data.load_stage_data(config.data, Kind.PPO, ["prompt"], f"kochat train {stage}")
    prompts = stage_data.dataset_prompts(stage_data.require_rows(data, "train", config.data, Kind.PPO, "nothing to train on"))
    held_out = (stage_data.dataset_prompts(stage_data.require_rows(data, "eval", config.data, Kind.PPO, "--eval-every needs held-out prompts"))
                if config.eval_every else [])[: config.eval_prompts]
    resume_from = last_state(Path(config.out), stage) if config.resume else None
    if config.resume and resume_from is None:
        raise UsageError(f"{config.out}: nothing to resume (no {state_file(stage)} under {Path(config.out) / outputs.CHECKPOINTS})")
    if not config.resume:
        check_writable(Path(config.out), config.overwrite)
    distributed.init_distributed(devices.resolve_device(config.device))
    set_seed(config.seed)
    return prompts, held_out, resume_from


def frozen_reference(config: OnlineRLConfig, actor, tokenizer, device: str):
    """The policy the KL is measured to, the SFT model: with LoRA, the actor with its LoRA branches skipped (no second
    copy of the weights; call after LoRA is applied); else a frozen copy, in bf16 where frozen models may be."""
    if config.lora_rank > 0:
        return WithoutLora(actor)
    reference = load_causal_lm(config.sft, tokenizer, dtype=devices.frozen_dtype(config, device)).requires_grad_(False).eval()
    stage_models.disable_dropout(reference)
    return reference.to(device)


def open_output(config: OnlineRLConfig) -> None:
    """Once every model has loaded (or been refused): a fresh --out, and the off-policy warning if it applies."""
    if not config.resume:
        outputs.prepare_output(config)
    if config.truncates_sampling() and distributed.is_main_process():
        stderr_console.print(f"warning: top_k={config.top_k}, top_p={config.top_p}: rollouts come from a truncated distribution "
                             "while the updates optimise the full (tempered) one, so they are off-policy", markup=False)


def rng_states(device: torch.device) -> dict[str, list]:
    """Every process's sampling RNG, for a checkpoint (a collective call)."""
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"torch_rng": distributed.gather_objects(torch.get_rng_state()), "cuda_rng": distributed.gather_objects(cuda_rng)}


def restore_rng(state: dict, device: torch.device, seed: int) -> None:
    """This process's sampling RNG as the checkpoint left it; on another number of processes, fresh seeded streams."""
    rank, world = distributed.rank_and_world()
    if len(state["torch_rng"]) == world:
        torch.set_rng_state(state["torch_rng"][rank])
        cuda_rng = state.get("cuda_rng", [None] * world)[rank]
        if cuda_rng is not None and device.type == "cuda":  # a GPU run must not replay its start's sampling noise
            torch.cuda.set_rng_state(cuda_rng, device)
    else:
        torch.manual_seed(seed + RANK_SEED_STRIDE * rank + state["step"])  # seeds CUDA too
