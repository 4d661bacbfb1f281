"""What every data loader shares: the bundled files, one JSONL reader, reporting bad rows, and loading a hub
dataset with an error that says why."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

# "owner/name" or "name" as the hub spells ids; a string of another shape that names no file is a missing file.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# How many bad rows a warning or an error spells out; the rest are only counted.
BAD_ROWS_SHOWN = 5


def bundled_path(relative: str) -> Path:
    """A data file that ships with the package: data/ in a checkout, the ginformer.bundled package when installed."""
    path = Path(str(resources.files("ginformer.bundled") / relative))
    if not path.is_file():
        raise FileNotFoundError(f"bundled data file {relative} not found at {path}: reinstall ginformer")
    return path


def read_jsonl(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line number, object) for every non-blank line of a JSONL file, numbered from 1. A line that is not a JSON
    object comes as (line number, the reason), so that each loader reports it with its other bad rows; bytes that
    are not UTF-8 stop the read with a ValueError naming the file, line and column."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: line {number}, column {err.start + 1}: not UTF-8 text ({err.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield number, f"not valid JSON ({err.msg})"
                continue
            yield number, row if isinstance(row, dict) else f"a JSON {type(row).__name__}, expected an object"


def report_bad_rows(
    name: str, bad: Sequence[tuple[int, str]], on_bad_row: str, where: str, numbering: str = "", stacklevel: int = 3
) -> None:
    """Raise (on_bad_row "error") or warn ("skip") about the `bad` (position, reason) rows of source `name`.

    `where` names a position ("line", "row"); `numbering` says how positions count, e.g. " (0-based ...)";
    `stacklevel` points the warning at the user's call (3: the public loader called this directly)."""
    if not bad:
        return
    listed = "; ".join(f"{where} {position}: {why}" for position, why in bad[:BAD_ROWS_SHOWN])
    more = f"; and {len(bad) - BAD_ROWS_SHOWN} more" if len(bad) > BAD_ROWS_SHOWN else ""
    summary = f"{name}: {len(bad)} bad row(s){numbering}: {listed}{more}"
    if on_bad_row == "error":
        raise ValueError(summary)
    warnings.warn(f"skipped {summary}", stacklevel=stacklevel)


def load_hub_dataset(dataset_id: str, config: str | None, split: str, local_formats: str):
    """datasets.load_dataset(dataset_id, config, split=split), or a ValueError naming the id and the cause."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, config, split=split)
    except Exception as err:  # the hub raises many kinds: connection, offline mode, missing repo or config
        raise ValueError(
            f"could not load hub dataset {dataset_id!r} ({type(err).__name__}: {err}); it is not a local path "
            f"either. Check the id and the network, or pass a local {local_formats} file"
        ) from err
