"""The datasets a stage reads: the train/eval splits of one kind from a `kochat data build` directory, and their prompts."""

from __future__ import annotations

from pathlib import Path

import datasets

from kochat_data.errors import UsageError
from kochat_data.schema import PROMPT_MESSAGES, Kind, require_columns
from kochat_train.template import Prompt, prompts_of


def require_build_directory(data: Path) -> None:
    if Path(data).is_file():
        raise UsageError(f"{data}: is a file; expected a directory written by `kochat data build` (make one with "
                         f"`kochat data build --sft/--rm/--ppo {data} --out DIR`)")
    if not Path(data).is_dir():
        raise UsageError(f"{data}: no such directory; expected one written by `kochat data build`")


def load_stage_data(data: Path, kind: Kind, columns: list[str], where: str) -> datasets.DatasetDict:
    """The train/eval DatasetDict of one kind from a build directory, with the columns a stage reads and
    `prompt_messages` (see `dataset_prompts`)."""
    require_build_directory(data)
    path = Path(data) / kind.value
    if not path.is_dir() and (Path(data) / "dataset_dict.json").is_file():
        raise UsageError(f"{data}: is one dataset of a build; pass the build directory above it ({Path(data).parent})")
    if not path.is_dir():
        raise UsageError(f"{path}: no {kind.value} dataset here; build one with `kochat data build --{kind.value} FILE --out {data}`")
    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError, IndexError) as err:  # IndexError: an empty split written by an older kochat
        raise UsageError(f"{path}: not a dataset written by `kochat data build` ({str(err).strip().splitlines()[0]})") from None
    if not isinstance(dataset, datasets.DatasetDict) or set(dataset) != {"train", "eval"}:
        raise UsageError(f"{path}: expected the train and eval splits of `kochat data build`, found {', '.join(dataset) if isinstance(dataset, datasets.DatasetDict) else 'one dataset'}")
    require_columns(dataset, kind, columns, where)
    if PROMPT_MESSAGES not in dataset["train"].column_names:  # built before conversations were kept: every prompt is a text
        dataset = datasets.DatasetDict({split: rows.add_column(PROMPT_MESSAGES, [""] * len(rows)) for split, rows in dataset.items()})
    return dataset


def dataset_prompts(rows: datasets.Dataset | dict[str, list]) -> list[Prompt]:
    """The prompts of a stage dataset's rows (or of a batch of them): conversations where kept, else texts."""
    columns = rows.column_names if isinstance(rows, datasets.Dataset) else rows.keys()
    return prompts_of(rows["prompt"], rows[PROMPT_MESSAGES] if PROMPT_MESSAGES in columns else None)


def require_rows(dataset: datasets.DatasetDict, split: str, data: Path, kind: Kind, what: str) -> datasets.Dataset:
    """A split that must not be empty for the command at hand."""
    if len(dataset[split]) == 0:
        raise UsageError(f"{Path(data) / kind.value}: the {split} split is empty; {what}"
                         + (" (build with --eval-ratio > 0)" if split == "eval" else ""))
    return dataset[split]
