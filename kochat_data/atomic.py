"""Directory outputs that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kochat_data.errors import UsageError


def check_writable(out: Path, overwrite: bool) -> None:
    """Refuse early (before any work) to replace a non-empty directory without --overwrite
    (after restoring or clearing what a killed writer of `out` left beside it)."""
    if out.parent.is_dir():
        _remove_stale_staging(out)
    refuse_non_directory(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out}: exists and is not empty; pass --overwrite to replace it")


def refuse_non_directory(out: Path) -> None:
    """An output directory's path that names a file (or a link to one) is refused before any work."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")


@contextmanager
def atomic_directory(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging directory beside `out` that replaces `out` only if the block succeeds.

    A failure (or a kill) leaves the previous `out` untouched; staging directories carry the
    writer's pid so that leftovers of killed runs are recognised and removed by the next run.
    """
    check_writable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = out.with_name(f".{out.name}.retired-{os.getpid()}")
    if out.exists():
        os.rename(out, retired)
    os.rename(staging, out)
    shutil.rmtree(retired, ignore_errors=True)


def _remove_stale_staging(out: Path) -> None:
    """Clear what killed writers left: staging directories, and a retired previous output,
    which goes back under its name when the kill fell between the two renames."""
    for leftover in out.parent.glob(f".{out.name}.partial-*"):
        if _writer_dead(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
    for retired in out.parent.glob(f".{out.name}.retired-*"):
        if _writer_dead(retired):
            if out.exists():
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.rename(retired, out)


def _writer_dead(leftover: Path) -> bool:
    pid = leftover.name.rsplit("-", 1)[-1]
    return pid.isdigit() and not _process_alive(int(pid))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
