"""Reading and writing files so that nothing is lost and nothing is read that should not be.

    inputs    a path that names a named pipe, a device or a socket is refused before it is opened (reading a FIFO
              blocks until someone writes to it; /dev/stdin would wait for the terminal); text is UTF-8 with or
              without a byte-order mark, which is an encoding marker, not text
    outputs   checked before any work starts: an output is never one of the inputs, never a directory, and no
              file stands where its directory should be; written under a temporary name in the same directory
              and renamed into place when complete (a rename is atomic), so a killed process leaves either the
              old file or the new one, never half of one
    pickles   torch refuses to unpickle anything but tensors and plain containers (``weights_only``); a refusal
              becomes an UnsafeFileError naming the file, not a traceback

Nothing here knows about runs, models or tasks.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from ginformer.errors import CheckpointError, DataError, OutputInTheWay

UTF8_BOM = "\ufeff"


class UnsafeFileError(CheckpointError):
    """A file that loading would have run code from; refused, and named."""


# ---------------------------------------------------------------------------------------------------- inputs


def special_file_kind(path: Path) -> str | None:
    """What a path names when it exists and is neither a regular file nor a directory ("a named pipe", ...)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def refuse_special_file(path: str | Path, what: str) -> None:
    """A DataError when `path` exists and is a named pipe, device or socket: reading one may block forever."""
    kind = special_file_kind(Path(path))
    if kind is not None:
        raise DataError(f"{what} {path} is {kind}, not a regular file: give a file (or a folder where one is read)")


def decode_text(data: bytes, path: str | Path) -> str:
    """UTF-8 bytes as text, a leading byte-order mark dropped; a DataError naming the byte otherwise."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}, byte {err.start}: not UTF-8 text ({err.reason})") from None


def read_text_file(path: str | Path, what: str = "file") -> str:
    """The text of a regular UTF-8 file (see `decode_text`)."""
    refuse_special_file(path, what)
    return decode_text(Path(path).read_bytes(), path)


@contextlib.contextmanager
def refusing_pickles(path: str | Path, what: str) -> Iterator[None]:
    """Turn torch's refusal to unpickle `path` (a payload that would construct something other than tensors)
    into an UnsafeFileError naming the file."""
    try:
        yield
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or ["not a tensor file"]
        # torch's message is a page of advice; the line naming what the pickle would build is the reason.
        reason = next((line for line in lines if "Unsupported" in line), lines[0]).split(". ")[0]
        raise UnsafeFileError(
            f"{path}: refused to load {what}: it holds a pickle that would run code or build objects other than "
            f"tensors ({reason}); only load it, by hand, if you trust where it came from"
        ) from None


# ---------------------------------------------------------------------------------------------------- outputs


def check_output_dir(path: str | Path, what: str) -> None:
    """A directory can be used or created at `path`: it is one, or it is missing and no ancestor is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputInTheWay(f"{what} {path} is a file, not a directory: move the file, or choose another {what}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputInTheWay(f"{what} {path}: {parent} is a file, not a directory: move the file, or "
                                     f"choose another {what}")
            return


def check_output_file(path: str | Path, what: str, inputs: Sequence[str | Path] = ()) -> None:
    """A file can be written at `path`: it is not a directory, not a special file, no ancestor is a file, and it
    is none of `inputs` (an output never overwrites what it was made from)."""
    path = Path(path)
    if path.is_dir():
        raise OutputInTheWay(f"{what} {path} is a directory: name a file")
    kind = special_file_kind(path)
    if kind is not None:  # writing into a named pipe would wait for a reader; a device is no place for a result
        raise OutputInTheWay(f"{what} {path} is {kind}, not a regular file: name a file")
    check_output_dir(path.parent, f"the folder of {what}")
    for source in inputs:
        if Path(source).exists() and path.exists() and os.path.samefile(source, path):
            raise OutputInTheWay(f"{what} {path} is also the input {source}: writing it would destroy the input; "
                                 "name another file")


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w", **open_options) -> Iterator[IO]:
    """A file object on a temporary file beside `path`, renamed over `path` when the block ends without an error
    (and deleted when it does not). Readers see the old file or the whole new one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, mode.replace("w", "x"), **open_options) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_writer(path, encoding="utf-8") as f:
        f.write(text)


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log in a single write(2) call: a killed process cannot leave half of it on a local
    file system (a regular file's write is not interrupted by a signal), so a log is never torn mid-line."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a full disk: say so rather than leave a torn line
            raise OSError(f"{path}: only {written} of {len(data)} bytes of a line were written (is the disk full?)")
    finally:
        os.close(fd)


def publish_dir(staged: Path, final: Path) -> None:
    """Move the complete directory `staged` to `final` by renaming it; an older `final` is moved aside first and
    deleted once the new one is in place."""
    old = None
    if final.exists():
        old = staged.with_name(f"{staged.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
