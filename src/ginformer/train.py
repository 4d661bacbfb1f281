"""Pretraining from scratch on transformers' Trainer: ``pretrain(settings)`` trains one model into a run directory.

    runs/<run_name>/
      config.yaml      the resolved settings (experiment.py), re-loadable with `load_settings`
      metrics.jsonl    one JSON object per event, see below
      checkpoint-N/    Trainer checkpoints: weights, optimizer, scheduler, RNG state (what `resume` needs)
      model/           the final model and tokenizer (`save_pretrained`); `AutoModelForCausalLM` loads it

metrics.jsonl events ("event" says which; every event has "step" and "epoch"):
    start    parameters, hidden_size, world_size, train_examples, val_examples
    train    train_loss (mean over the steps since the last log), learning_rate, grad_norm, graph
    eval     val_loss (token-weighted mean over the validation set), val_perplexity = exp(val_loss), graph
    end      train_runtime (s), mean_train_loss
    resume   the step a resumed run continues from (later events of the interrupted run are dropped)
    stopped  reason, loss, last_checkpoint: a non-finite loss ended the run
"graph" holds the model's learned graph scalars per layer (`GinformerForCausalLM.graph_parameters()`, e.g.
the sharpening α of every layer), or {} for a model without them.

Because the loop is transformers' Trainer, the same command runs unchanged on several processes:

    torchrun --nproc_per_node 2 -m ginformer.cli pretrain --config ...
    accelerate launch --multi_gpu --num_processes 2 -m ginformer.cli pretrain --config ...

Without a GPU the processes form a gloo group on the CPU (`accelerate launch --cpu` starts one process only).
Every process runs `pretrain`; the main process alone writes files. N processes with per-device batch b see
the same examples per step, in the same order, as one process with batch N·b.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import yaml
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import EvalLoopOutput, get_last_checkpoint

from ginformer.data.protein import (
    bundled_protein_path,
    format_protein_example,
    format_protein_prompt,
    load_protein_records,
    split_records,
)
from ginformer.data.tokenizer import build_protein_tokenizer
from ginformer.experiment import (
    ConfigError,
    DataSettings,
    ExperimentSettings,
    ModelSettings,
    save_settings,
    settings_to_dict,
)
from ginformer.modeling import GinformerForCausalLM
from ginformer.sizing import count_parameters

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
MODEL_DIR = "model"
IGNORE_INDEX = -100  # label value the causal-LM loss skips


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped before the bad step changed any weights."""


def pretrain(
    settings: ExperimentSettings,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
) -> Path:
    """Train a model from scratch as `settings` describe and return its run directory.

    `resume` continues from the newest checkpoint in the run directory; `overwrite` deletes an existing run
    directory first. Without either, an existing run directory is an error. `callbacks` are passed to the
    Trainer (e.g. for plots or tests). Raises `TrainingDiverged` when the loss becomes NaN/inf.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues a run, overwrite deletes it")
    run_dir = settings.run_dir
    args = training_arguments(settings)
    checkpoint = check_run_dir(settings, resume, overwrite)
    barrier()  # every process has looked before the main process changes anything

    tokenizer = build_protein_tokenizer()
    train_examples, val_examples = build_datasets(settings.data, tokenizer)
    set_seed(settings.training.seed)  # the model's initial weights
    model = build_model(settings.model, tokenizer)
    longest = max(len(e["input_ids"]) for e in train_examples + val_examples)
    if longest > model.config.max_position_embeddings:
        raise ConfigError(
            f"the longest example has {longest} tokens but model.max_position_embeddings="
            f"{model.config.max_position_embeddings}; raise it or lower data.max_length"
        )

    # Only now, with data and model built, does the run directory change: a bad setting leaves it untouched.
    if args.process_index == 0:
        create_run_dir(settings, checkpoint, overwrite)
    barrier()
    metrics = MetricsLogger(run_dir / METRICS_FILE)
    trainer = GuardedTrainer(
        model=model,
        args=args,
        train_dataset=train_examples,
        eval_dataset=val_examples,
        data_collator=CausalLMCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[metrics, *callbacks],
    )
    if args.process_index == 0 and checkpoint is None:
        metrics.write(
            {
                "event": "start",
                "step": 0,
                "epoch": 0.0,
                "parameters": count_parameters(model),
                "hidden_size": model.config.hidden_size,
                "world_size": args.world_size,
                "train_examples": len(train_examples),
                "val_examples": len(val_examples),
            }
        )
    train_until_done_or_diverged(trainer, metrics, checkpoint)
    trainer.save_model(str(run_dir / MODEL_DIR))
    return run_dir


def train_until_done_or_diverged(trainer: Trainer, metrics: MetricsLogger, checkpoint: str | None) -> None:
    """trainer.train(), turning a non-finite loss into TrainingDiverged after logging a `stopped` event;
    the step that produced it has changed no weight, so the last checkpoint is the last good state."""
    run_dir = Path(trainer.args.output_dir)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except _NonFiniteLoss as err:
        last = get_last_checkpoint(run_dir)
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


def training_arguments(settings: ExperimentSettings) -> TrainingArguments:
    """transformers' TrainingArguments for a run; the only place our settings meet Trainer's names."""
    t = settings.training
    return TrainingArguments(
        output_dir=str(settings.run_dir),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.num_train_epochs,
        max_steps=-1 if t.max_steps is None else t.max_steps,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,  # the shuffling order is part of the run, so resume and multi-process runs see it too
        bf16=t.bf16,
        torch_compile=t.torch_compile,
        # We stop on a non-finite loss ourselves; Trainer's filter would hide it from the logs.
        logging_nan_inf_filter=False,
        prediction_loss_only=True,
        remove_unused_columns=False,
        # Without an accelerator, accelerate only forms a multi-process (gloo) group when told it runs on CPU.
        use_cpu=not torch.accelerator.is_available(),
        dataloader_pin_memory=torch.accelerator.is_available(),
        report_to="none",
        disable_tqdm=False,
    )


def build_model(settings: ModelSettings, tokenizer: PreTrainedTokenizerBase):
    """A freshly initialised GinformerForCausalLM for this tokenizer, sized to target_params when it is set."""
    config = settings.to_config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GinformerForCausalLM(config)


def build_datasets(
    settings: DataSettings, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]]]:
    """Load, split and tokenise the protein examples: (train, val) lists of {input_ids, labels}."""
    source = bundled_protein_path() if settings.source == "bundled" else settings.source
    records = load_protein_records(
        source,
        max_length=settings.max_length,
        on_bad_row=settings.on_bad_row,
        allow_ambiguous=settings.allow_ambiguous,
    )
    train, val = split_records(records, val_fraction=settings.val_fraction, seed=settings.split_seed)
    train, val = train[: settings.max_train_examples], val[: settings.max_val_examples]
    if not train or not val:
        raise ValueError(
            f"{source}: {len(train)} training and {len(val)} validation examples after filtering "
            f"(data.max_length={settings.max_length}); both need at least one"
        )

    def encode(record) -> dict[str, list[int]]:
        prompt = format_protein_prompt(record.sequence) if settings.loss_on == "labels" else None
        return tokenize_example(format_protein_example(record), tokenizer, prompt)

    return [encode(r) for r in train], [encode(r) for r in val]


def tokenize_example(text: str, tokenizer: PreTrainedTokenizerBase, prompt: str | None = None) -> dict[str, list[int]]:
    """{input_ids, labels} for one training text. With a `prompt` (a prefix of `text`), its tokens get no loss,
    so only the completion (the label tokens and the end token) is learned."""
    input_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    labels = list(input_ids)
    if prompt is not None:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if input_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(f"prompt {prompt!r} does not tokenise as a prefix of {text!r}")
        labels[: len(prompt_ids)] = [IGNORE_INDEX] * len(prompt_ids)
    return {"input_ids": input_ids, "labels": labels}


@dataclass
class CausalLMCollator:
    """Right-pads a batch of {input_ids, labels} to its longest example; padding gets no attention and no loss."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)  # (B, T)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.tensor(example["labels"])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class MetricsLogger(TrainerCallback):
    """Appends Trainer's logs to metrics.jsonl in our schema (see the module docstring), main process only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, event: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        event = metrics_event(logs, state.global_step, state.epoch, model)
        if event is not None:
            self.write(event)


def metrics_event(logs: dict[str, float], step: int, epoch: float | None, model=None) -> dict[str, Any] | None:
    """One metrics.jsonl event from one Trainer log dict; None for logs we do not record."""
    head = {"step": step, "epoch": epoch}
    if "loss" in logs:
        return {
            "event": "train",
            **head,
            "train_loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "graph": _graph_parameters(model),
        }
    if "eval_loss" in logs:
        return {
            "event": "eval",
            **head,
            "val_loss": logs["eval_loss"],
            "val_perplexity": perplexity(logs["eval_loss"]),
            "graph": _graph_parameters(model),
        }
    if "train_runtime" in logs:
        return {
            "event": "end",
            **head,
            "train_runtime": logs["train_runtime"],
            "mean_train_loss": logs.get("train_loss"),
        }
    return None


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy); infinite rather than an OverflowError for a diverged loss."""
    return math.exp(loss) if loss < math.log(torch.finfo(torch.float64).max) else math.inf


def _graph_parameters(model) -> dict[str, list]:
    return model.graph_parameters() if hasattr(model, "graph_parameters") else {}


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
    summing token losses and token counts does not, and its exp() is the perplexity.
    """

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
        metrics = {f"{metric_key_prefix}_loss": total_nll / max(total_tokens, 1)}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=num_samples)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the summed next-token cross-entropy and the number of tokens scored (labels != -100)."""
    targets = labels[:, 1:]  # (B, T-1): token t+1 is predicted at position t
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, T-1)
    return nll.sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)


def check_run_dir(settings: ExperimentSettings, resume: bool, overwrite: bool) -> str | None:
    """Check the run directory against the flags without changing it; return the checkpoint to resume from."""
    run_dir = settings.run_dir
    if resume:
        checkpoint = get_last_checkpoint(run_dir) if run_dir.is_dir() else None
        if checkpoint is None:
            raise FileNotFoundError(f"cannot resume: no checkpoint-N directory in {run_dir}")
        _check_resumable(settings, run_dir / CONFIG_FILE)
        return checkpoint
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"run directory {run_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
            f"or choose another training.run_name"
        )
    return None


def create_run_dir(settings: ExperimentSettings, checkpoint: str | None, overwrite: bool) -> None:
    """(Re)create the run directory and write config.yaml; on resume, trim metrics.jsonl to the checkpoint."""
    run_dir = settings.run_dir
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_settings(settings, run_dir / CONFIG_FILE)
    if checkpoint is not None:
        _truncate_metrics(run_dir / METRICS_FILE, _checkpoint_step(checkpoint))


def _check_resumable(settings: ExperimentSettings, saved_config: Path) -> None:
    """A resumed run may change how it trains (e.g. more steps), not what it trains or on which data."""
    if not saved_config.is_file():
        return
    saved = yaml.safe_load(saved_config.read_text()) or {}
    current = settings_to_dict(settings)
    changed = [
        f"{section}.{key}"
        for section in ("model", "data")
        for key, value in current[section].items()
        if saved.get(section, {}).get(key, value) != value
    ]
    if changed:
        raise ConfigError(
            f"cannot resume {saved_config.parent}: {', '.join(changed)} differ from its {CONFIG_FILE}; "
            "a resumed run must keep its model and data settings"
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics an interrupted run logged after `step` (they will be logged again), keep its history of
    stops and resumes, and note this resume."""
    kept = []
    if path.is_file():
        for line in path.read_text().splitlines():
            event = json.loads(line) if line else None
            if event and (event["step"] <= step or event["event"] in ("stopped", "resume")):
                kept.append(line)
    kept.append(json.dumps({"event": "resume", "step": step, "epoch": None}))
    path.write_text("\n".join(kept) + "\n")


def _checkpoint_step(checkpoint: str) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[1])


def barrier() -> None:
    """Wait until every process gets here; nothing to wait for in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
