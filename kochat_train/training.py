"""What every Trainer-based stage does around `transformers.Trainer`: its arguments, the NaN guard, the held-out
baseline, metrics and progress callbacks, and the run itself (resuming if asked)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import SCHEDULER_NAME

from kochat_data.errors import KochatError
from kochat_data.progress import progress_bar
from kochat_train import interrupts
from kochat_train.config import TrainConfig
from kochat_train.devices import resolve_device, uses_bf16
from kochat_train.distributed import all_reduce_sum, is_main_process, rank_and_world
from kochat_train.outputs import (
    CHECKPOINTS,
    METRICS_FILE,
    append_metrics,
    last_complete_checkpoint,
    write_config,
)
from kochat_train.sharding import is_sharded, load_shards, save_shards
from kochat_train.tracking import TrackerCallback, closing_tracker, open_tracker


class TrainingDiverged(KochatError):
    """The loss became NaN/inf; the run stopped before applying that update (exit 3)."""

    exit_code = 3


def planned_steps(rows: int, config: TrainConfig, world: int) -> int:
    """Optimizer steps to run: max_steps if set, else -1 (the epochs decide) unless the epochs
    give fewer than min_steps updates, then min_steps."""
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = math.ceil(rows / (config.batch_size * world)) // config.grad_accum
    return config.min_steps if per_epoch * config.epochs < config.min_steps else -1


def training_arguments(config: TrainConfig, train_rows: int, *, remove_unused_columns: bool = True, evaluate: bool = True) -> TrainingArguments:
    """Trainer arguments from a stage config (under torchrun, per process: batch_size is per device)."""
    device = resolve_device(config.device)
    cuda = device == "cuda"
    bf16 = uses_bf16(config, device)
    return TrainingArguments(
        output_dir=str(Path(config.out) / CHECKPOINTS),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        max_steps=planned_steps(train_rows, config, rank_and_world()[1]),
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a share of the steps in transformers 5
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        lr_scheduler_type="linear",
        logging_steps=config.logging_steps,
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=device == "cpu",
        bf16=bf16,
        fp16=config.precision == "auto" and cuda and not bf16,
        dataloader_pin_memory=cuda,
        train_sampling_strategy=config.sampling,
        remove_unused_columns=remove_unused_columns,
        # Every trainable parameter gets a gradient in every stage (frozen ones are not DDP's to reduce), so DDP
        # needs no extra pass over the autograd graph to find unused ones (the Trainer's default with a PreTrainedModel).
        ddp_find_unused_parameters=False,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        # transformers refuses to checkpoint the optimizer of a model sharded at load time (its saver does not know
        # DTensors) unless told to save the model only; GuardedTrainer saves both shard by shard instead.
        save_only_model=config.sharding != "none",
        report_to="none",
        disable_tqdm=True,
    )


@torch.no_grad()
def held_out_loss(trainer: Trainer) -> float:
    """The trainer's eval loss of its model as it stands now (before training: the baseline to beat).

    The same batches as the Trainer's evaluations (its eval dataloader: length-grouped, seeded, a
    shard per process) and the same mean (each batch's loss weighted by its rows), but the model is
    run directly: a Trainer's evaluate() before train() would prepare it for evaluation and keep
    torchrun's gradient averaging from being set up. The RNG is forked because building the
    dataloader draws a seed, and the training that follows must shuffle as a resumed run does.
    """
    model, device = trainer.model, trainer.args.device
    was_training = model.training
    if not is_sharded(model):  # a sharded model's placement is FSDP's (`.to` on its shards raises)
        model.to(device)
    model.eval()
    weighted, rows = 0.0, 0
    # Under the mixed precision the Trainer evaluates in (accelerate wraps the model once training starts).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), trainer.accelerator.autocast():
        for batch in trainer.get_eval_dataloader():
            weighted += model(**{key: value.to(device) for key, value in batch.items()}).loss.item() * len(batch["input_ids"])
            rows += len(batch["input_ids"])
    model.train(was_training)
    weighted, rows = all_reduce_sum(torch.tensor([weighted, rows], dtype=torch.float64, device=device)).tolist()
    return weighted / rows


class GuardedTrainer(Trainer):
    """A Trainer that stops at the first non-finite loss instead of training on it, and checkpoints a model sharded at
    load time (`--sharding fsdp`) shard by shard: its weights and AdamW state in `sharding.save_shards`, the
    scheduler, RNG and trainer state as for any model."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if is_sharded(self.model):
            self.args.save_only_model = False  # set only to pass the Trainer's refusal (training_arguments)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not (_internal_call and is_sharded(self.model)):  # a checkpoint's sharded weights go with its optimizer state
            super().save_model(output_dir, _internal_call)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not is_sharded(self.model):
            return super()._save_optimizer_and_scheduler(output_dir)
        save_shards(output_dir, self.model, _unwrapped(self.optimizer))
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not is_sharded(self.model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_shards(resume_from_checkpoint, self.model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not is_sharded(self.model):
            return super()._load_optimizer_and_scheduler(checkpoint)
        load_shards(checkpoint, self.model, _unwrapped(self.optimizer))
        self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_NAME, weights_only=True))

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            last = last_complete_checkpoint(Path(self.args.output_dir))
            kept = f"last good checkpoint: {last} (continue with --resume, e.g. with a lower --learning-rate)" if last else "no checkpoint was saved yet"
            raise TrainingDiverged(f"loss is {loss.item()} at step {self.state.global_step + 1}; stopped before that update; {kept}")
        return loss


def _unwrapped(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper: the one whose state dict torch.distributed.checkpoint reads."""
    return getattr(optimizer, "optimizer", optimizer)


class MetricsLog(TrainerCallback):
    """Append every log event, train and eval, to metrics.jsonl as it happens."""

    def __init__(self, path: Path, stage: str):
        self.path = path
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            append_metrics(self.path, {"stage": self.stage, "step": state.global_step, "epoch": state.epoch, **logs})


class RichProgress(TrainerCallback):
    """One rich bar per run: steps done of max_steps, with the latest loss."""

    def __init__(self, stage: str):
        self.stage = stage
        self.progress = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress = progress_bar()
            self.progress.start()
            self.task = self.progress.add_task(f"train {self.stage}", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs and "loss" in logs:
            self.progress.update(self.task, description=f"train {self.stage} · loss {logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class StopOnSignal(TrainerCallback):
    """After the step in which SIGINT or SIGTERM came (`interrupts`): save a checkpoint there and end training."""

    def __init__(self):
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if interrupts.stop_requested():
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step


def fit(
    trainer: Trainer,
    config: TrainConfig,
    stage: str,
    resume_from: str | None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Train (resuming if asked) with the shared callbacks; returns the final eval metrics."""
    out = Path(config.out)
    write_config(out, stage, config)
    trainer.remove_callback(PrinterCallback)  # metrics.jsonl and the progress bar replace its prints
    tracker = open_tracker(config.report_to, out, stage, config.to_json()) if is_main_process() else None
    for callback in (MetricsLog(out / METRICS_FILE, stage), RichProgress(stage), *([TrackerCallback(tracker)] if tracker else []),
                     *callbacks):
        trainer.add_callback(callback)
    stop = StopOnSignal()
    trainer.add_callback(stop)
    started = time.perf_counter()
    with closing_tracker(tracker):
        with interrupts.steps():
            train_output = trainer.train(resume_from_checkpoint=resume_from)
        if stop.stopped_at is not None:
            raise interrupts.stopped(stage, out, stop.stopped_at)
        final = _final_eval(trainer)
    final.update({key: value for key, value in train_output.metrics.items() if key in ("train_loss", "train_runtime")})
    final["wall_seconds"] = round(time.perf_counter() - started, 1)
    return final


def _final_eval(trainer: Trainer) -> dict[str, Any]:
    if trainer.eval_dataset is None:
        return {}
    history = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    if history and history[-1].get("step") == trainer.state.global_step:
        return {key: value for key, value in history[-1].items() if key.startswith("eval_")}
    return trainer.evaluate()
