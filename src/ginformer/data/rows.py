"""What every data loader shares: the bundled files, one JSONL reader, reporting bad rows, and loading a hub
dataset with an error that says why."""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

from ginformer.errors import DataError, MissingInput
from ginformer.files import decode_text, refuse_special_file

# "owner/name" or "name" as the hub spells ids; a string of another shape that names no file is a missing file.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# How many bad rows a warning or an error spells out; the rest are only counted.
BAD_ROWS_SHOWN = 5


def bundled_path(relative: str) -> Path:
    """A data file that ships with the package: data/ in a checkout, the ginformer.bundled package when installed."""
    path = Path(str(resources.files("ginformer.bundled") / relative))
    if not path.is_file():
        raise MissingInput(f"bundled data file {relative} not found at {path}: reinstall ginformer")
    return path


def read_jsonl(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line number, object) for every non-blank line of a JSONL file, numbered from 1. A line that is not a JSON
    object comes as (line number, the reason), so that each loader reports it with its other bad rows; bytes that
    are not UTF-8 stop the read with a DataError naming the file, line and column. A byte-order mark before the
    first line and CRLF line ends are read as the encoding and line ends they are."""
    refuse_special_file(path, "data file")
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                where = f"line {number}, column {err.start + 1}"
                raise DataError(f"{path}: {where}: not UTF-8 text ({err.reason})") from None
            if not line.strip():
                continue
            yield number, _parse_json_object(line)


def _parse_json_object(text: str) -> dict | str:
    """One JSON object, or the reason it is not one: not JSON, another JSON type, nested too deeply to parse, or
    holding a lone surrogate escape (\\ud800), which JSON allows and no UTF-8 text (nor tokenizer) takes."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg})"
    except RecursionError:
        return "nested too deeply to read"
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, expected an object"
    return _surrogate_problem(row, text) or row


def _surrogate_problem(value: object, text: str) -> str | None:
    if "\\u" not in text:  # a lone surrogate can only come from an escape
        return None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        escape = err.object[err.start : err.end].encode("unicode_escape").decode()
        return f"holds a lone surrogate escape ({escape}), which is not text"
    except RecursionError:
        return "nested too deeply to read"
    return None


def read_records(
    source: str | Path, suffixes: Sequence[str], *, hub_config: str | None = None, hub_split: str = "train"
) -> tuple[list[tuple[str, dict | str]], str]:
    """The rows of a file or of a hub dataset, as (where, row) pairs, and a name for messages.

    `where` names the row for messages: "line N" in a JSONL file (lines count from 1), "row N" elsewhere (rows
    count from 0). `row` is a dict, or the reason the reader could not make one (a JSONL line that is no JSON
    object), so each loader reports it with its other bad rows. A string that names no file and looks like a hub
    id (owner/name) is loaded with `datasets.load_dataset(id, hub_config, split=hub_split)`. Values stay as read:
    no type inference, so a protein sequence such as "NA" stays a string.
    """
    path = Path(source)
    refuse_special_file(path, "data source")
    if path.exists():
        if path.is_dir() or path.suffix not in suffixes:
            raise DataError(f"{path}: unsupported source; expected a file ending in {', '.join(suffixes)}")
        return _READERS[path.suffix](path), str(path)
    if isinstance(source, Path) or path.suffix in suffixes or not HUB_ID.match(str(source)):
        raise MissingInput(f"source file not found: {path} (and it is not a hub id of the form owner/name)")
    dataset = load_hub_dataset(str(source), hub_config, hub_split, local_formats="/".join(suffixes))
    return [(f"row {i}", dict(row)) for i, row in enumerate(dataset)], f"hub dataset {source!r} ({hub_split})"


def _read_json(path: Path) -> list[tuple[str, dict | str]]:
    """A JSON file holding a list of objects."""
    text = decode_text(path.read_bytes(), path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to read") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: a JSON {type(rows).__name__}; expected a list of objects (or use .jsonl)")
    return [(f"row {i}", (_surrogate_problem(row, text) or row) if isinstance(row, dict)
             else f"a JSON {type(row).__name__}, expected an object") for i, row in enumerate(rows)]


def _read_parquet(path: Path) -> list[tuple[str, dict | str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:  # not parquet, truncated, or columns of a broken schema
        raise DataError(f"{path}: not a readable parquet file ({err})") from None
    return [(f"row {i}", row) for i, row in enumerate(table.to_pylist())]


def _read_csv(path: Path) -> list[tuple[str, dict | str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [(f"row {i}", row) for i, row in enumerate(csv.DictReader(f))]
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except csv.Error as err:  # a NUL byte, a field over the csv module's size limit
        raise DataError(f"{path}: not a readable CSV file ({err})") from None


_READERS = {
    ".jsonl": lambda path: [(f"line {number}", row) for number, row in read_jsonl(path)],
    ".json": _read_json,
    ".parquet": _read_parquet,
    ".csv": _read_csv,
}


def report_bad_rows(name: str, bad: Sequence[tuple[str, str]], on_bad_row: str, stacklevel: int = 3) -> None:
    """Raise (on_bad_row "error") or warn ("skip") about the `bad` (where, reason) rows of source `name`.

    `stacklevel` points the warning at the user's call (3: the public loader called this directly)."""
    if not bad:
        return
    listed = "; ".join(f"{where}: {why}" for where, why in bad[:BAD_ROWS_SHOWN])
    more = f"; and {len(bad) - BAD_ROWS_SHOWN} more" if len(bad) > BAD_ROWS_SHOWN else ""
    counting = " (rows count from 0)" if bad[0][0].startswith("row ") else ""
    summary = f"{name}: {len(bad)} bad row(s){counting}: {listed}{more}"
    if on_bad_row == "error":
        raise DataError(summary)
    warnings.warn(f"skipped {summary}", stacklevel=stacklevel)


def load_hub_dataset(dataset_id: str, config: str | None, split: str, local_formats: str):
    """datasets.load_dataset(dataset_id, config, split=split), or a DataError naming the id and the cause."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, config, split=split)
    except Exception as err:  # the hub raises many kinds: connection, offline mode, missing repo or config
        raise DataError(
            f"could not load hub dataset {dataset_id!r} ({type(err).__name__}: {err}); it is not a local path "
            f"either. Check the id and the network, or pass a local {local_formats} file"
        ) from err
