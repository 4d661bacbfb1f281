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
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput, rotate_checkpoints

from ginformer.data.batches import IGNORE_INDEX, CausalLMCollator
from ginformer.errors import ConfigError, DataError, GinformerError, OutputInTheWay
from ginformer.runs.config import RunSettings, settings_yaml
from ginformer.runs.run_dir import Checkpoint, RunDir, RunLocked
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
    side, task = settings.side, settings.task()
    checkpoint = check_run_dir(settings, run, resume, overwrite)
    barrier()  # every process has looked before the main process changes anything

    tokenizer = task.tokenizer(side.base_tokenizer(settings.model))
    splits = task.datasets(tokenizer)
    check_splits(splits)
    set_seed(settings.training.seed)  # the initial weights of what trains
    built = side.build(settings.model, tokenizer)
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
    metrics = MetricsLogger(run, side.graph_scalars)
    resumed = [] if checkpoint is None else [ResumeRecord(run, settings, checkpoint.step)]
    trainer = GuardedTrainer(
        model=built.model,
        args=args,
        train_dataset=splits.train,
        eval_dataset=splits.val,
        data_collator=CausalLMCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[metrics, *resumed, *callbacks],
    )
    if args.process_index == 0 and checkpoint is None:
        metrics.write(
            {
                "event": "start",
                "step": 0,
                "epoch": 0.0,
                "model": side.name,
                "parameters": built.trainable_parameters,
                "total_parameters": built.total_parameters,
                **built.record,
                "world_size": args.world_size,
                "train_examples": len(splits.train),
                "val_examples": len(splits.val),
                "graph": side.graph_scalars(built.model),
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


# TrainingSettings fields that are not TrainingArguments' own, or mean something else there; every other field
# passes to TrainingArguments by its name, so a new Trainer option is one field in TrainingSettings.
TRANSLATED = frozenset({"output_root", "lr_scheduler", "min_lr_ratio", "max_steps", "gradient_checkpointing",
                        "report_to"})


def training_arguments(settings: RunSettings) -> TrainingArguments:
    """transformers' TrainingArguments for a run; the only place our settings meet Trainer's names."""
    t = settings.training
    own = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name not in TRANSLATED}
    cosine_floor = t.lr_scheduler == "cosine" and t.min_lr_ratio > 0
    return TrainingArguments(
        **own,
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
    except _NonFiniteLoss as err:
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

    def __init__(self, run: RunDir, graph_scalars=lambda model: {}):
        self.run = run
        self.graph_scalars = graph_scalars
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
                    "grad_norm": logs.get("grad_norm"), "step_time": step_time, "graph": self.graph_scalars(model)}
        if "eval_loss" in logs:
            return {"event": "eval", **head, "val_loss": logs["eval_loss"],
                    "val_perplexity": perplexity(logs["eval_loss"]), "graph": self.graph_scalars(model)}
        if "train_runtime" in logs:
            return {"event": "end", **head, "train_runtime": logs["train_runtime"],
                    "mean_train_loss": logs.get("train_loss")}
        return None


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy); infinite rather than an OverflowError for a diverged loss."""
    return math.exp(loss) if loss < math.log(torch.finfo(torch.float64).max) else math.inf


class _NonFiniteLoss(Exception):
    def __init__(self, step: int, loss: float):
        super().__init__(f"non-finite loss {loss} at step {step}")
        self.step, self.loss = step, loss


class GuardedTrainer(Trainer):
    """Trainer with two changes: it stops before a step whose loss is NaN/inf changes the weights, and its
    validation loss is the token-weighted mean over the whole set.

    The loss check runs after backward and before the optimizer step, so the weights (and every checkpoint)
    stay those of the last good step; all processes agree on the verdict, so none is left waiting. Trainer's own
    evaluation averages per-batch means, which depends on the eval batch size and the number of processes;
    summing token losses and token counts does not, and its exp() is the perplexity. Checkpoints are Trainer's
    own (a peft model saves its adapter, and a Sparse-GIN model's state dict is its adapter: adapter/hub.py),
    written into the run's .partial/ and renamed into place once complete (runs/run_dir.py).
    """

    _checkpoint_root: str | None = None  # where Trainer writes the checkpoint it is saving (None: output_dir)

    def _save_checkpoint(self, model, trial):
        run = RunDir(self.args.output_dir)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            run.stage(name)
        self.accelerator.wait_for_everyone()  # the staged directory is empty before any process writes its part
        self._checkpoint_root = str(run.staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_root = None
        self.accelerator.wait_for_everyone()  # every process's part (its RNG state, FSDP shards) is written
        if self.args.should_save:
            run.publish(name)
            rotate_checkpoints(output_dir=str(run.path), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial):
        # Trainer's _save_checkpoint asks this where checkpoint-N/ goes; while we save, the staging directory.
        return self._checkpoint_root or super()._get_output_dir(trial)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = (~torch.isfinite(loss)).to(torch.float32).reshape(1)
        if self.args.world_size > 1:
            bad = self.accelerator.gather(bad)
        if bad.any():
            raise _NonFiniteLoss(self.state.global_step + 1, loss.item())
        return loss

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        model = self._wrap_model(self.model, training=False, dataloader=dataloader)
        model.eval()
        total_nll, total_tokens, num_samples = 0.0, 0, 0
        for inputs in dataloader:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            nll, tokens = token_nll(logits, inputs["labels"])
            # gather_for_metrics drops the examples repeated to give every process a full last batch.
            nll, tokens = self.accelerator.gather_for_metrics((nll, tokens))
            total_nll += nll.sum().item()
            total_tokens += int(tokens.sum().item())
            num_samples += len(tokens)
            self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        if total_tokens == 0:  # a loss of 0 would read as a perfect model
            raise DataError(f"the {description.lower()} set has no token to score ({num_samples} examples)")
        metrics = {f"{metric_key_prefix}_loss": total_nll / total_tokens}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=num_samples)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the summed next-token cross-entropy and the number of tokens scored (labels != -100)."""
    targets = labels[:, 1:]  # (B, T-1): token t+1 is predicted at position t
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, T-1)
    return nll.sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)


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
