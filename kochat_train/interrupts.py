"""Ctrl-C (SIGINT) and SIGTERM while a stage trains: the first asks it to stop after the step it is in, save a
checkpoint there and exit with `Interrupted` (exit 130), whose one line says how to resume; a second stops at once
(KeyboardInterrupt), leaving the last checkpoint saved before it.

Outside a training loop (loading, tokenizing, evaluating, writing) either signal stops at once: there is no step
to finish. Under torchrun every process gets the signal; they agree (`stop_requested`) so that all of them stop
after the same step, as their collectives need.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from kochat_data.errors import Interrupted
from kochat_train import distributed, outputs

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"stepping": False, "requested": None}  # the name of the signal that asked for a stop, if one did


def _on_signal(number: int, _frame) -> None:
    if not _state["stepping"] or _state["requested"] is not None:
        raise KeyboardInterrupt
    _state["requested"] = signal.Signals(number).name
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"\n{_state['requested']}: stopping after this step to save a checkpoint (again to stop at once)", file=sys.stderr, flush=True)


@contextmanager
def handled() -> Iterator[None]:
    """Within it (a command's run; entered by the CLI), SIGTERM is handled as Ctrl-C is, where Python's default would
    end the process without a word; the handlers before it come back after."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    previous = {number: signal.signal(number, _on_signal) for number in SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def steps() -> Iterator[None]:
    """Within it, a first signal is remembered for `stop_requested` instead of stopping at once."""
    _state.update(stepping=True, requested=None)
    try:
        yield
    finally:
        _state.update(stepping=False, requested=None)


def stop_requested() -> bool:
    """Whether any process was asked to stop (gathered under torchrun, so that every process agrees)."""
    return any(distributed.gather_objects(_state["requested"] is not None))


def stopped(stage: str, out: Path, step: int) -> Interrupted:
    """What a stage raises once it has saved the checkpoint of `step` after a signal."""
    return Interrupted(f"{stage}: stopped after step {step}, saved in {out / outputs.CHECKPOINTS / f'checkpoint-{step}'}")
