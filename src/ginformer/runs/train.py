"""Training on transformers' Trainer: ``train(settings)`` trains one run, from scratch or on a frozen pretrained
model, on any task, into a run directory.

    runs/<run_name>/
      config.yaml      the resolved settings (runs/config.py), re-loadable with `load_run_settings`
      metrics.jsonl    one JSON object per event, see below
      checkpoint-N/    Trainer checkpoints: weights (adapter weights only for an adapter), optimizer, scheduler,
                       RNG state: what `resume` needs
      model/           from scratch: the final model and tokenizer (`AutoModelForCausalLM` loads it)
      adapter/         on a pretrained model: the final adapter (Sparse-GIN's or peft's files) and tokenizer

runs/run_dir.py owns these files: checkpoints and the final model are written into .partial/ and renamed when
complete, a resume starts from the newest complete checkpoint, and the run directory is locked while it trains.

metrics.jsonl events ("event" says which; every event has "step" and "epoch"):
    start    model (scratch | pretrained), parameters (trainable), total_parameters, world_size, train_examples,
             val_examples, graph; from scratch hidden_size; on a pretrained model method, base, and for LoRA its
             rank and the Sparse-GIN budget it matched
    train    train_loss (mean over the steps since the last log), learning_rate, grad_norm, step_time (mean
             seconds per optimizer step since the last log, evaluation and saving excluded), graph
    eval     val_loss (token-weighted mean over the validation set), val_perplexity = exp(val_loss), graph
    end      train_runtime (s), mean_train_loss
    resume   the step a resumed run continues from (later events of the interrupted run are dropped)
    stopped  reason, loss, last_checkpoint: a non-finite loss ended the run
"graph" holds the learned graph scalars per layer (runs/models.py: `graph_scalars`), {} for a model without.
A pretrained model with method "none" trains nothing: its run holds config.yaml, the start event and one
evaluation at step 0, the numbers the adapters must beat.

Because the loop is transformers' Trainer, the same command runs unchanged on several processes:

    torchrun --nproc_per_node 2 -m ginformer.cli pretrain --config ...
    accelerate launch --multi_gpu --num_processes 2 -m ginformer.cli finetune --config ...

Without a GPU the processes form a gloo group on the CPU (`accelerate launch --cpu` starts one process only).
Every process runs `train`; the main process alone writes files. N processes with per-device batch b see the
same examples per step, in the same order, as one process with batch N·b.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from ginformer.errors import ConfigError, GinformerError, OutputInTheWay
from ginformer.runs.config import RunSettings, settings_yaml
from ginformer.runs.objectives import OBJECTIVES, OPTIONS, Objective
from ginformer.runs.run_dir import Checkpoint, RunDir, RunLocked
from ginformer.runs.trainers import NonFiniteLoss
from ginformer.tasks import Splits

logger = logging.getLogger(__name__)


class TrainingDiverged(GinformerError, RuntimeError):
    """The loss became NaN or infinite; the run stopped before the bad step changed any weights."""


def train(
    settings: RunSettings, resume: bool = False, overwrite: bool = False, callbacks: Sequence[TrainerCallback] = ()
) -> Path:
    """Train as `settings` describe and return the run directory (see the module docstring for its layout).

    `resume` continues from the newest complete checkpoint; `overwrite` deletes an existing run directory first;
    without either an existing run directory is an error. While it trains, the process holds the run directory's
    lock: a second process is refused (runs/run_dir.py). `callbacks` go to the Trainer. Raises TrainingDiverged
    when the loss becomes NaN/inf.
    """
    side = settings.side
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: resume continues a run, overwrite deletes it")
    if resume and not side.trains(settings.model):
        raise ConfigError("model.method='none' trains nothing, so there is nothing to resume; use --overwrite")
    run = RunDir(settings.run_dir)
    run.check_location("the run directory (training.output_root/training.run_name)")
    args = training_arguments(settings)
    with holding(run, main=args.process_index == 0):
        _train_holding(settings, run, args, resume, overwrite, callbacks)
    return run.path


def _train_holding(
    settings: RunSettings, run: RunDir, args: TrainingArguments, resume: bool, overwrite: bool,
    callbacks: Sequence[TrainerCallback],
) -> None:
    side, task, objective = settings.side, settings.task(), settings.objective
    checkpoint = check_run_dir(settings, run, resume, overwrite)
    barrier()  # every process has looked before the main process changes anything

    tokenizer = task.tokenizer(side.base_tokenizer(settings.model))
    splits = objective.splits(task, tokenizer, settings.training)
    check_splits(splits)
    set_seed(settings.training.seed)  # the initial weights of what trains
    built = side.build(settings.model, tokenizer, peft_route=objective.peft_route)
    positions = getattr(built.model.config, "max_position_embeddings", None)
    if positions is not None and splits.longest > positions:
        raise ConfigError(
            f"the longest example has {splits.longest} tokens but the model has {positions} positions "
            "(model.max_position_embeddings): raise it, or shorten the examples (data.max_length, data.block_size)"
        )

    # Only now, with data and model built, does the run directory change: a bad setting leaves it untouched. A
    # resume changes it once its checkpoint has loaded (ResumeRecord), so a checkpoint that fails to load does not.
    if args.process_index == 0 and checkpoint is None:
        start_run_dir(settings, run, overwrite)
    barrier()
    metrics = MetricsLogger(run, side.graph_scalars, objective)
    resumed = [] if checkpoint is None else [ResumeRecord(run, settings, checkpoint.step)]
    trainer = objective.trainer(
        task, tokenizer, splits, model=built.model, args=args, callbacks=[metrics, *resumed, *callbacks],
        **({} if built.peft_config is None else {"peft_config": built.peft_config}),
    )
    if args.process_index == 0 and checkpoint is None:
        parameters, total = side.parameters(trainer.model)  # the model as trained: TRL wraps the base itself
        metrics.write(
            {
                "event": "start",
                "step": 0,
                "epoch": 0.0,
                "model": side.name,
                "objective": objective.name,
                "parameters": parameters,
                "total_parameters": total,
                **built.record,
                "world_size": args.world_size,
                "train_examples": len(splits.train),
                "val_examples": len(splits.val),
                "graph": side.graph_scalars(trainer.model),
            }
        )
    if not side.trains(settings.model):
        trainer.evaluate()  # logged as the eval event at step 0
        return
    train_until_done_or_diverged(trainer, metrics, None if checkpoint is None else str(checkpoint.path))
    # Staged and renamed, as checkpoints are: a run killed while saving has no model/ a reader would trust.
    staged = run.stage(side.final_dir) if args.process_index == 0 else run.staging / side.final_dir
    barrier()
    side.save(trainer, staged, data=task.describe())
    barrier()
    if args.process_index == 0:
        run.publish(side.final_dir)
        run.clear_staging()


def check_splits(splits: Splits) -> None:
    """Both splits hold an example: an empty validation split would log a loss of 0 (perplexity 1), the best
    number a comparison could rank; an empty training split trains nothing."""
    for name, split in (("training", splits.train), ("validation", splits.val)):
        if len(split) == 0:
            raise ConfigError(
                f"the {name} split is empty (training: {len(splits.train)} examples, validation: "
                f"{len(splits.val)}{'; ' + splits.source_sizes if splits.source_sizes else ''}): use more data, "
                "another data.val_fraction, or shorter examples (data.block_size, data.max_length)"
            )


@contextlib.contextmanager
def holding(run: RunDir, main: bool) -> Iterator[None]:
    """The main process holds the run directory's lock; every process learns whether it got it, so none is left
    waiting at a barrier for a main process that was refused."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        with run.lock():
            yield
        return
    with contextlib.ExitStack() as stack:
        refusal = [None]
        if main:
            try:
                stack.enter_context(run.lock())
            except RunLocked as err:
                refusal = [str(err)]
        torch.distributed.broadcast_object_list(refusal, src=0)
        if refusal[0] is not None:
            raise RunLocked(refusal[0])
        yield


# transformers 5.23 renamed TrainingArguments' gradient_checkpointing to activation_checkpointing; the old name stays
# as a deprecated alias until v6, and older releases know the old name only.
CHECKPOINTING_ARGUMENT = next(name for name in ("activation_checkpointing", "gradient_checkpointing")
                              if name in TrainingArguments.__dataclass_fields__)


# TrainingSettings fields that are not TrainingArguments' own, or mean something else there, and the objective's
# (runs/objectives.py: it passes those it reads); every other field passes to TrainingArguments by its name, so a
# new Trainer option is one field in TrainingSettings.
TRANSLATED = frozenset({"output_root", "lr_scheduler", "min_lr_ratio", "max_steps", "gradient_checkpointing",
                        "report_to", "method", *OPTIONS})


def training_arguments(settings: RunSettings) -> TrainingArguments:
    """transformers' TrainingArguments (TRL's subclass of them for DPO and GRPO) for a run; the only place our
    settings meet Trainer's names."""
    t, objective = settings.training, settings.objective
    own = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name not in TRANSLATED}
    cosine_floor = t.lr_scheduler == "cosine" and t.min_lr_ratio > 0
    return objective.arguments_class()(
        **own,
        **objective.arguments(t, settings.task()),
        output_dir=str(settings.run_dir),
        lr_scheduler_type="cosine_with_min_lr" if cosine_floor else t.lr_scheduler,
        lr_scheduler_kwargs={"min_lr_rate": t.min_lr_ratio} if cosine_floor else None,
        max_steps=-1 if t.max_steps is None else t.max_steps,
        **{CHECKPOINTING_ARGUMENT: t.gradient_checkpointing},
        report_to=t.report_to or "none",
        logging_strategy="steps",
        eval_strategy="steps",
        save_strategy="steps",
        data_seed=t.seed,  # the shuffling order is part of the run, so resume and multi-process runs see it too
        # We stop on a non-finite loss ourselves; Trainer's filter would hide it from the logs.
        logging_nan_inf_filter=False,
        prediction_loss_only=True,
        remove_unused_columns=False,
        # Without an accelerator, accelerate only forms a multi-process (gloo) group when told it runs on CPU.
        use_cpu=not torch.accelerator.is_available(),
        dataloader_pin_memory=torch.accelerator.is_available(),
        disable_tqdm=False,
    )


def train_until_done_or_diverged(trainer: Trainer, metrics: MetricsLogger, checkpoint: str | None) -> None:
    """trainer.train(), turning a non-finite loss into TrainingDiverged after logging a `stopped` event;
    the step that produced it has changed no weight, so the last checkpoint is the last good state."""
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except NonFiniteLoss as err:
        saved = RunDir(trainer.args.output_dir).checkpoints()
        last = str(saved[-1].path) if saved else None
        if trainer.args.process_index == 0:
            metrics.write(
                {
                    "event": "stopped",
                    "step": err.step,
                    "epoch": trainer.state.epoch,
                    "reason": "non-finite loss",
                    "loss": str(err.loss),
                    "last_checkpoint": None if last is None else Path(last).name,
                }
            )
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        raise TrainingDiverged(
            f"loss became {err.loss} at step {err.step}; training stopped and {kept} "
            f"(try a lower training.learning_rate, then --resume or --overwrite)"
        ) from None


class MetricsLogger(TrainerCallback):
    """Appends Trainer's logs to metrics.jsonl in our schema (see the module docstring), main process only."""

    def __init__(self, run: RunDir, graph_scalars=lambda model: {}, objective: Objective = OBJECTIVES["sft"]):
        self.run = run
        self.graph_scalars = graph_scalars
        self.objective = objective
        self._started: float | None = None
        self._elapsed, self._steps = 0.0, 0

    def write(self, event: dict[str, Any]) -> None:
        self.run.append_event(event)

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._started is not None:
            self._elapsed += time.perf_counter() - self._started
            self._steps += 1
            self._started = None

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        event = self.event(logs, state.global_step, state.epoch, model)
        if event is not None:
            self.write(event)

    def event(self, logs: dict[str, float], step: int, epoch: float | None, model=None) -> dict[str, Any] | None:
        """One metrics.jsonl event from one Trainer log dict; None for logs we do not record."""
        head = {"step": step, "epoch": epoch}
        if "loss" in logs:
            step_time = self._elapsed / self._steps if self._steps else None
            self._elapsed, self._steps = 0.0, 0
            return {"event": "train", **head, "train_loss": logs["loss"], "learning_rate": logs.get("learning_rate"),
                    "grad_norm": logs.get("grad_norm"), "step_time": step_time,
                    **{ours: logs[theirs] for theirs, ours in self.objective.train_logs.items() if theirs in logs},
                    "graph": self.graph_scalars(model)}
        if "eval_loss" in logs:
            # The objective's loss: the perplexity of next-token prediction only; DPO's loss is not one.
            ppl = {"val_perplexity": perplexity(logs["eval_loss"])} if self.objective.name == "sft" else {}
            return {"event": "eval", **head, "val_loss": logs["eval_loss"], **ppl,
                    **{ours: logs[f"eval_{theirs}"] for theirs, ours in self.objective.eval_logs.items()
                       if f"eval_{theirs}" in logs},
                    "graph": self.graph_scalars(model)}
        if "train_runtime" in logs:
            return {"event": "end", **head, "train_runtime": logs["train_runtime"],
                    "mean_train_loss": logs.get("train_loss")}
        return None


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy); infinite rather than an OverflowError for a diverged loss."""
    return math.exp(loss) if loss < math.log(torch.finfo(torch.float64).max) else math.inf


def check_run_dir(settings: RunSettings, run: RunDir, resume: bool, overwrite: bool) -> Checkpoint | None:
    """Check the run directory against the flags without changing it; return the checkpoint to resume from."""
    if resume:
        checkpoint, skipped = run.resume_point()
        _check_resumable(settings, run)
        run.read_metrics(torn_tail_ok=True)  # a damaged line is named now, before anything changes
        torn = run.torn_line()
        if torn is not None:
            logger.info("%s: line %d is torn (an interrupted write); the resumed run drops it", run.metrics_path, torn)
        if skipped:
            logger.info("%s: resuming from %s, the newest complete checkpoint; skipped %s", run.path,
                        checkpoint.path.name, "; ".join(skipped))
        return checkpoint
    if run.holds_files() and not overwrite:
        raise OutputInTheWay(
            f"run directory {run.path} already exists; pass --resume to continue it, --overwrite to replace it, "
            f"or choose another training.run_name"
        )
    return None


def start_run_dir(settings: RunSettings, run: RunDir, overwrite: bool) -> None:
    """Empty the run directory (with `overwrite`) and write config.yaml: a new run starts."""
    if overwrite:
        run.clear()
    run.clear_staging()
    run.write_config(settings_yaml(settings))


class ResumeRecord(TrainerCallback):
    """Once Trainer has loaded the checkpoint (weights, optimizer, scheduler), the resumed run takes over its
    directory: config.yaml gets the new settings, metrics.jsonl loses what the interrupted run logged after the
    checkpoint and notes the resume, and what interrupted writes left in .partial/ goes."""

    def __init__(self, run: RunDir, settings: RunSettings, step: int):
        self.run, self.settings, self.step = run, settings, step

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.run.write_config(settings_yaml(self.settings))
            self.run.trim_metrics_for_resume(self.step)
            self.run.clear_staging()


def changed_settings(
    saved: dict[str, Any], wanted: dict[str, dict[str, Any]], sections: Sequence[str], missing_ok: bool = False
) -> list[str]:
    """The `section.key`s whose value in `wanted` differs from the `saved` config (a parsed config.yaml); with
    `missing_ok`, a key the saved config lacks (written before the key existed) counts as unchanged."""
    return [
        f"{section}.{key}"
        for section in sections
        for key, value in wanted[section].items()
        if (saved.get(section) or {}).get(key, value if missing_ok else None) != value
    ]


def _check_resumable(settings: RunSettings, run: RunDir) -> None:
    """A resumed run may change how it trains (e.g. more steps), not what it trains or on which data."""
    if not run.config_path.is_file():
        return
    changed = changed_settings(run.read_config(), settings.to_dict(), ("model", "data"), missing_ok=True)
    if changed:
        raise ConfigError(
            f"cannot resume {run.path}: {', '.join(changed)} differ from its {run.config_path.name}; "
            "a resumed run must keep its model and data settings"
        )


def barrier() -> None:
    """Wait until every process gets here; nothing to wait for in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
