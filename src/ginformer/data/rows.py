"""What every data loader shares: reporting bad rows, and loading a hub dataset with an error that says why."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

# How many bad rows a warning or an error spells out; the rest are only counted.
BAD_ROWS_SHOWN = 5


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
    """datasets.load_dataset(dataset_id, config, split=split), or a RuntimeError naming the id and the cause."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, config, split=split)
    except Exception as err:  # the hub raises many kinds: connection, offline mode, missing repo or config
        raise RuntimeError(
            f"could not load hub dataset {dataset_id!r} ({type(err).__name__}: {err}); it is not a local path "
            f"either. Check the id and the network, or pass a local {local_formats} file"
        ) from err
