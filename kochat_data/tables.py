"""Records from tables: Parquet and CSV files, `datasets.save_to_disk` directories and hub datasets.

Each row becomes a located record as the JSON readers make them: its index is the row's number
(1-based, over the splits in order for a dataset dictionary) and its line the CSV line it starts
on (None where a table has no lines). `--columns target=source,…` renames fields on the way in.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

from kochat_data.errors import UsageError
from kochat_data.hub import hub_offline, hub_reachable
from kochat_data.reading import FileFormat, SourceRecord, read_bytes, read_records, read_text

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
PARQUET_MAGIC = b"PAR1"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
_ROWS_PER_BATCH = 1024


def parse_columns(spec: str | None) -> dict[str, str]:
    """`prompt=Q,completion=A` → {"prompt": "Q", "completion": "A"} (kochat's field ← the source's column)."""
    if not spec:
        return {}
    mapping = {}
    for item in spec.split(","):
        target, equals, source = (part.strip() for part in item.partition("="))
        if not equals or not target or not source:
            raise UsageError(f"--columns: expected FIELD=COLUMN[,FIELD=COLUMN…], got {item!r}")
        if target in mapping:
            raise UsageError(f"--columns: {target} given twice")
        mapping[target] = source
    return mapping


def renamed(records: Iterator[SourceRecord], columns: dict[str, str], where: str) -> Iterator[SourceRecord]:
    """The records with the mapped columns under kochat's names. A source that has none of the columns
    is read as it is (a build may mix a CSV that needs the mapping with files that do not); one that
    has only some of them is refused: its first record says which are missing."""
    if not columns:
        yield from records
        return
    applies = None
    for source in records:
        if isinstance(source.data, dict):
            if applies is None:
                present = [column for column in columns.values() if column in source.data]
                missing = [column for column in columns.values() if column not in source.data]
                if present and missing:
                    raise UsageError(f"{where}: --columns names {', '.join(missing)}, which the data lacks "
                                     f"(it has {', '.join(map(str, source.data))})")
                applies = bool(present)
            if applies:
                data = {key: value for key, value in source.data.items() if key not in columns.values()}
                data.update({target: source.data.get(column) for target, column in columns.items()})
                source = SourceRecord(source.index, source.line, data, source.error)
        yield source


def read_source(path: Path, columns: dict[str, str] | None = None) -> tuple[FileFormat, str, Iterator[SourceRecord]]:
    """Any source's format, fingerprint and records (with `columns` renamed): a table, else a JSON or
    conversation file (`reading.read_records`)."""
    file_format = table_format(path)
    if file_format is None:
        file_format, fingerprint, records = read_records(path)
    else:
        fingerprint, records = read_table(path, file_format)
    return file_format, fingerprint, renamed(records, columns or {}, str(path))


def table_format(path: Path) -> FileFormat | None:
    """The table format of a path, or None for a JSON or conversation file."""
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return FileFormat.ARROW
        raise UsageError(f"{path}: is a directory, expected a data file or a `datasets.save_to_disk` directory")
    if not path.exists():
        return FileFormat.HUB if hub_name(path) else None  # None: the JSON reader says there is no such file
    if path.suffix.lower() in CSV_SUFFIXES:
        return FileFormat.CSV
    try:
        with path.open("rb") as handle:  # the magic alone: the file is read once, by its reader
            magic = handle.read(4)
    except OSError:
        return None  # the JSON reader words what is wrong with it
    return FileFormat.PARQUET if magic == PARQUET_MAGIC else None


def hub_name(path: Path) -> bool:
    """`owner/name[:split]` that is no local path: neither it nor its owner directory exists here."""
    text = str(path)
    return bool(_HUB_NAME.match(text)) and not Path(text.split("/")[0]).exists()


def read_table(path: Path, file_format: FileFormat) -> tuple[str, Iterator[SourceRecord]]:
    """The table's fingerprint (sha256 of a file; the dataset's own fingerprint otherwise) and its records."""
    if file_format is FileFormat.CSV:
        text, sha256 = read_text(path)
        return sha256, _csv_records(text, CSV_SUFFIXES[path.suffix.lower()], path)
    if file_format is FileFormat.PARQUET:
        return hashlib.sha256(read_bytes(path)).hexdigest(), _parquet_records(path)
    import datasets

    dataset = _load_saved(path) if file_format is FileFormat.ARROW else _load_hub(str(path))
    parts = list(dataset.values()) if isinstance(dataset, datasets.DatasetDict) else [dataset]
    fingerprint = hashlib.sha256("".join(part._fingerprint for part in parts).encode()).hexdigest()
    return fingerprint, _dataset_records(parts)


def _csv_records(text: str, delimiter: str, path: Path) -> Iterator[SourceRecord]:
    # Python's csv reader (not polars or datasets) because it tells the line each row starts on.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise UsageError(f"{path}: empty CSV, expected a header line")
    if len(set(header)) != len(header):
        raise UsageError(f"{path}:1: the header names a column twice ({', '.join(header)})")
    start = reader.line_num + 1
    for index, row in enumerate(reader, start=1):
        if len(row) != len(header):
            yield SourceRecord(index, start, error=f"CSV: {len(row)} fields, the header has {len(header)}")
        else:
            yield SourceRecord(index, start, dict(zip(header, row, strict=True)))
        start = reader.line_num + 1


def _parquet_records(path: Path) -> Iterator[SourceRecord]:
    # pyarrow's reader (which `datasets` uses underneath) streams row batches without the cached copy
    # `datasets.Dataset.from_parquet` writes first.
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=_ROWS_PER_BATCH)
    except (pa.ArrowException, OSError) as err:
        raise UsageError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            index += 1
            yield SourceRecord(index, None, row)


def _dataset_records(parts) -> Iterator[SourceRecord]:
    index = 0
    for part in parts:
        for batch in part.iter(batch_size=_ROWS_PER_BATCH):
            for row in zip(*batch.values(), strict=True):
                index += 1
                yield SourceRecord(index, None, dict(zip(batch, row, strict=True)))


def _load_saved(path: Path):
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise UsageError(f"{path}: not a readable `save_to_disk` directory ({str(err).splitlines()[0]})") from None


def _load_hub(name: str):
    """`owner/name[:split]`: the split named, else `train` when there is one, else the only split."""
    import datasets

    name, _, split = name.partition(":")
    if hub_offline("HF_DATASETS_OFFLINE") or not hub_reachable():
        raise UsageError(f"{name}: no such file, and the hub cannot be reached to load it as a dataset (offline); "
                         "download it where there is network (datasets.load_dataset(…).save_to_disk(DIR)) and pass DIR")
    try:
        loaded = datasets.load_dataset(name, split=split or None)
    except Exception as err:  # noqa: BLE001 — the hub's errors are many; each is one line to the user
        raise UsageError(f"{name}: no such file, and not a loadable hub dataset ({str(err).splitlines()[0]})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded and len(loaded) != 1:
            raise UsageError(f"{name}: splits {', '.join(loaded)}; name one as {name}:SPLIT")
        loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    return loaded
