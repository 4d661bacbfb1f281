"""The run directory: one object that knows every file of ``runs/<name>/``, its name and its format; no other
module builds a path inside a run or parses a line of its metrics.

    config.yaml        the resolved settings (runs/config.py); replaced whole, never edited in place
    metrics.jsonl      one JSON object per event (runs/train.py lists them); each event is appended in one write
    checkpoint-N/      Trainer's checkpoints, each written into .partial/ and renamed here when complete
    model/, adapter/   the finished model (or adapter) and tokenizer, staged and renamed the same way
    eval_<data>.json   `ginformer evaluate`'s results (and eval_<data>_generations.jsonl), lm_eval_<tasks>.json
    .partial/          what is being written; a run that is killed leaves its half-written files here, never under
                       a name a reader takes for a finished one, and the next run or resume clears it
    .lock              the pid of the process training into the directory (held with flock while it runs)

Crash safety, in one place: a file is written to a temporary name and renamed when complete (files.py), so a
kill -9 at any point leaves the old or the new version of it. On resume the newest *complete* checkpoint is taken
(`resume_point`): its trainer_state.json parses and names its step, its weights' headers parse and cover their
files, its optimizer, scheduler and RNG files are whole; the ones it skips, and why, are reported. A process
that trains into a directory holds its lock: a second one is refused with the holder's pid, and the lock of a
process that died is taken over with a note.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ginformer.errors import CheckpointError, MissingInput, OutputInTheWay
from ginformer.files import (
    append_line,
    atomic_write_text,
    check_output_dir,
    publish_dir,
    read_text_file,
    refusing_pickles,
)
from ginformer.settings import load_yaml

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
STAGING_DIR = ".partial"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # Trainer's names (transformers.trainer_utils.PREFIX_CHECKPOINT_DIR)
# What a checkpoint must hold besides its trainer state and weights: without them Trainer resumes with a fresh
# optimizer or schedule and says nothing, so a run would continue differently from the one that was interrupted.
OPTIMIZER_STATES = ("optimizer.pt", "optimizer.bin", "optimizer_0")  # plain, FSDP full, FSDP sharded
SCHEDULER_STATE = "scheduler.pt"
# Files Trainer unpickles on resume (always with weights_only): checked the same way before anything changes.
UNPICKLED = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|pytorch_model\.bin)$")

logger = logging.getLogger(__name__)


class RunLocked(OutputInTheWay):
    """Another live process is training into the run directory."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


class RunDir:
    """runs/<name>/ and every file in it (module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def staging(self) -> Path:
        return self.path / STAGING_DIR

    def final(self, name: str) -> Path:
        """The finished model's directory (`model`, `adapter`)."""
        return self.path / name

    def evaluation(self, data: str) -> Path:
        return self.path / f"eval_{data}.json"

    def generations(self, data: str) -> Path:
        return self.path / f"eval_{data}_generations.jsonl"

    def has_evaluation(self, data: str = "val") -> bool:
        return self.evaluation(data).is_file()

    def read_evaluation(self, data: str = "val") -> dict[str, Any]:
        """`ginformer evaluate`'s result on `data` ("val": the run's validation split), as written."""
        path = self.evaluation(data)
        try:
            return json.loads(read_text_file(path, "evaluation file"))
        except (json.JSONDecodeError, RecursionError) as err:
            raise CheckpointError(f"{path} is not valid JSON ({err}): evaluate the run again") from None

    def write_evaluation(self, data: str, result: Mapping[str, Any], generations: Sequence[Mapping[str, Any]] = ()) -> None:
        atomic_write_text(self.evaluation(data), json.dumps(result, indent=2) + "\n")
        if generations:
            atomic_write_text(self.generations(data), "".join(json.dumps(row) + "\n" for row in generations))

    def lm_eval(self, tasks: Sequence[str]) -> Path:
        names = "_".join(re.sub(r"[^\w.-]", "_", Path(task).stem) for task in tasks)
        return self.path / f"lm_eval_{names}.json"

    # ------------------------------------------------------------------------------------------------ the directory

    def check_location(self, what: str = "run directory") -> None:
        """The directory is one, or can be made: no file stands where it or an ancestor should be."""
        check_output_dir(self.path, what)

    def holds_files(self) -> bool:
        """Whether anything but the lock and unfinished writes is in it."""
        return self.path.is_dir() and any(p.name not in (LOCK_FILE, STAGING_DIR) for p in self.path.iterdir())

    def clear(self) -> None:
        """Delete everything in it but the lock (--overwrite, by the process holding the lock)."""
        for entry in self.path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for this process (created when missing, and removed again at the end when nothing
        else was written into it). A live holder is a RunLocked naming its pid; a dead one's lock is taken over."""
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = _acquire(self.path / LOCK_FILE)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / LOCK_FILE)  # before unlocking: a newcomer then makes a fresh lock file
            os.close(fd)
            if created and not self.holds_files():  # the run failed before it wrote anything: leave no trace
                shutil.rmtree(self.path, ignore_errors=True)

    # ------------------------------------------------------------------------------------------------ config.yaml

    def read_config(self) -> dict[str, Any]:
        """The saved settings as plain data (config.py turns them back into RunSettings)."""
        raw = load_yaml(read_text_file(self.config_path, "run config"), str(self.config_path))
        if raw is not None and not isinstance(raw, dict):
            raise CheckpointError(f"{self.config_path}: a {type(raw).__name__}, expected a mapping of sections; the "
                                  "run directory is damaged")
        return raw or {}

    def write_config(self, text: str) -> None:
        atomic_write_text(self.config_path, text)

    # ------------------------------------------------------------------------------------------------ metrics.jsonl

    def read_metrics(self, torn_tail_ok: bool = False) -> list[dict[str, Any]]:
        """The events in order. A line that is not an event is a ValueError naming it, except, with
        `torn_tail_ok`, a last line without its newline (`torn_line`): a write the machine did not finish."""
        events = []
        for number, line, event in self._lines():
            if isinstance(event, str):
                if torn_tail_ok and number == self.torn_line():
                    break
                raise CheckpointError(f"{self.metrics_path}: line {number}: {event}; the file is damaged: delete that "
                                      "line, or train the run again with --overwrite")
            events.append(event)
        return events

    def torn_line(self) -> int | None:
        """The number of metrics.jsonl's last line when it is not an event and lacks its newline: cut off by a
        machine that stopped mid-write (a killed process cannot tear a line: each is written in one call)."""
        lines = list(self._lines())
        text = self.metrics_path.read_bytes() if lines else b""
        if lines and isinstance(lines[-1][2], str) and not text.endswith(b"\n"):
            return lines[-1][0]
        return None

    def _lines(self) -> Iterator[tuple[int, str, dict[str, Any] | str]]:
        if not self.metrics_path.is_file():
            return
        for number, line in enumerate(read_text_file(self.metrics_path, "metrics file").split("\n"), start=1):
            if line.strip():
                yield number, line, _event(line)

    def append_event(self, event: Mapping[str, Any]) -> None:
        append_line(self.metrics_path, json.dumps(event))

    def start_event(self) -> dict[str, Any]:
        start = next((e for e in self.read_metrics() if e["event"] == "start"), None)
        if start is None:
            raise CheckpointError(f"{self.metrics_path} has no start event: the run never started training")
        return start

    def trim_metrics_for_resume(self, step: int) -> None:
        """Drop the events an interrupted run logged after `step` (they will be logged again), keep its history
        of stops and resumes, and note this resume; replaced whole, so an interruption leaves the old file."""
        kept = [e for e in self.read_metrics(torn_tail_ok=True) if e["step"] <= step or e["event"] in
                ("stopped", "resume")]
        kept.append({"event": "resume", "step": step, "epoch": None})
        atomic_write_text(self.metrics_path, "".join(json.dumps(e) + "\n" for e in kept))

    # ------------------------------------------------------------------------------------------------ checkpoints

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint-N directory, oldest first."""
        if not self.path.is_dir():
            return []
        found = [(CHECKPOINT.match(p.name), p) for p in self.path.iterdir() if p.is_dir()]
        return sorted((Checkpoint(int(m.group(1)), p) for m, p in found if m), key=lambda c: c.step)

    def resume_point(self) -> tuple[Checkpoint, list[str]]:
        """The newest complete checkpoint, and a line for each newer one skipped (interrupted or damaged writes).
        A ValueError naming every problem when there is none; an UnsafeFileError when a file of the chosen one
        holds a pickle torch refuses (a tampered checkpoint is refused, not skipped)."""
        skipped = [f"{p.name} (in {STAGING_DIR}/): its write was interrupted" for p in self._staged_checkpoints()]
        for checkpoint in reversed(self.checkpoints()):
            problem = checkpoint_problem(checkpoint.path, checkpoint.step)
            if problem is None:
                refuse_unsafe_pickles(checkpoint.path)
                return checkpoint, skipped
            skipped.append(f"{checkpoint.path.name}: {problem}")
        if not skipped:
            raise MissingInput(f"cannot resume: no checkpoint-N directory in {self.path}")
        raise CheckpointError(f"cannot resume {self.path}: no complete checkpoint ({'; '.join(skipped)}); train it "
                              "again with --overwrite")

    def _staged_checkpoints(self) -> list[Path]:
        if not self.staging.is_dir():
            return []
        return sorted((p for p in self.staging.iterdir() if CHECKPOINT.match(p.name)), key=lambda p: p.name)

    # ------------------------------------------------------------------------------------------------ staging

    def stage(self, name: str) -> Path:
        """An empty directory in .partial/ to write `name` into before `publish(name)` moves it into place."""
        staged = self.staging / name
        if staged.exists():
            shutil.rmtree(staged)
        staged.mkdir(parents=True)
        return staged

    def publish(self, name: str) -> Path:
        """Move the complete .partial/<name> to <name> (replacing an older one) by renaming it."""
        staged = self.staging / name
        if not staged.is_dir() or not any(staged.iterdir()):  # a bug (Trainer saving elsewhere), not bad input
            raise RuntimeError(f"{staged} was not written: nothing to publish")
        publish_dir(staged, self.path / name)
        return self.path / name

    def clear_staging(self) -> None:
        """Forget what interrupted writes left (called by a process holding the lock, once its run has started)."""
        shutil.rmtree(self.staging, ignore_errors=True)


def checkpoint_problem(path: Path, step: int) -> str | None:
    """Why a checkpoint directory cannot be resumed from, or None when every file it needs is whole."""
    state = path / TRAINER_STATE
    if not state.is_file():
        return f"no {TRAINER_STATE}"
    try:
        saved = json.loads(state.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return f"{TRAINER_STATE} is not valid JSON (truncated?)"
    global_step = saved.get("global_step") if isinstance(saved, dict) else None
    if isinstance(global_step, bool) or not isinstance(global_step, int):
        return f"{TRAINER_STATE} holds global_step={global_step!r}, not a step number"
    if global_step != step:
        return f"{TRAINER_STATE} says step {global_step}, but the directory is named for step {step}"
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model*.bin"))
    if not weights and not any(path.glob("pytorch_model_fsdp_*")):
        return "no weights file"
    for file in weights:
        problem = _file_problem(file)
        if problem:
            return problem
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"{index.name} is not a shard index"
        missing = sorted(shard for shard in shards if not (path / shard).is_file())
        if missing:
            return f"weight shards {', '.join(missing)} are missing"
    optimizer = next((path / name for name in OPTIMIZER_STATES if (path / name).exists()), None)
    if optimizer is None:
        return "no optimizer state"
    rng = sorted(path.glob("rng_state*.pth"))
    if not rng:
        return "no RNG state"
    for file in (optimizer, path / SCHEDULER_STATE, *rng):
        problem = _file_problem(file)
        if problem:
            return problem
    return None


def _file_problem(file: Path) -> str | None:
    """Why one checkpoint file is not whole: missing, empty, a safetensors header that does not parse or does not
    cover the file, a torch file (a zip archive) without its closing directory. A directory (FSDP's sharded
    states) is taken as it is."""
    if file.is_dir():
        return None
    if not file.is_file():
        return f"no {file.name}"
    if file.stat().st_size == 0:
        return f"{file.name} is empty (0 bytes)"
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            return f"{file.name} is truncated or corrupt ({err})"
    elif file.suffix in (".pt", ".pth", ".bin"):
        try:
            with zipfile.ZipFile(file):
                pass
        except (zipfile.BadZipFile, OSError):
            return f"{file.name} is truncated or corrupt (not a whole torch file)"
    return None


def refuse_unsafe_pickles(path: Path) -> None:
    """Load every file of a checkpoint that Trainer unpickles on resume, as it does (weights_only, numpy's RNG
    state allowed) but memory-mapped, so that a payload torch refuses is an UnsafeFileError naming the file
    before the run directory changes."""
    import torch
    from transformers.trainer_pt_utils import safe_globals

    for file in sorted(path.iterdir()):
        if UNPICKLED.match(file.name):
            with refusing_pickles(file, "a checkpoint file"), safe_globals():
                torch.load(file, weights_only=True, mmap=True, map_location="cpu")


def _event(line: str) -> dict[str, Any] | str:
    """One metrics event, or why the line is not one."""
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return "not a JSON object (a torn or edited line)"
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return "not an event (no 'event' name)"
    if isinstance(event.get("step"), bool) or not isinstance(event.get("step"), int):
        return f"event {event['event']!r} has step {event.get('step')!r}, not a step number"
    return event


def _acquire(lock_path: Path) -> int:
    """An open, flock-ed descriptor of the lock file holding our pid (see RunDir.lock)."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _pid_in(fd)
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(
                f"{lock_path.parent} is locked by process {holder or '(unknown)'}, which is training into it; wait "
                "for it to finish (or stop it), or choose another training.run_name"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed this file as we opened it: lock the new one
            break
        os.close(fd)
    previous = _pid_in(fd)
    if previous and previous != os.getpid():
        logger.info("%s: took over the lock of process %d, which is no longer running", lock_path.parent, previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
