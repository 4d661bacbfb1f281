"""The trainers a run uses: transformers' Trainer and TRL's DPO and GRPO trainers, each with our two guards.

    Guarded           stops before a step whose loss is NaN/inf changes the weights (NonFiniteLoss), and writes
                      each checkpoint into the run's .partial/, renamed into place once complete (runs/run_dir.py)
    GuardedTrainer    Trainer, Guarded, with the validation loss as the token-weighted mean over the whole set
    guarded(cls)      any other Trainer subclass (TRL's), Guarded, keeping its own evaluation

The loss check runs after backward and before the optimizer step, so the weights (and every checkpoint) stay
those of the last good step; all processes agree on the verdict, so none is left waiting. Checkpoints are
Trainer's own (a peft model saves its adapter, and a Sparse-GIN model's state dict is its adapter: adapter/hub.py).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput, rotate_checkpoints

from ginformer.data.batches import IGNORE_INDEX
from ginformer.errors import DataError
from ginformer.runs.run_dir import RunDir


class NonFiniteLoss(Exception):
    """Raised inside Trainer's loop; train.py turns it into the run's TrainingDiverged."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"non-finite loss {loss} at step {step}")
        self.step, self.loss = step, loss


class Guarded:
    """The loss guard and staged checkpoints, for any Trainer subclass it precedes in the bases."""

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

    def create_model_card(self, *args, **kwargs):
        # TRL's trainers write a README.md into output_dir, the run directory, at every checkpoint; that
        # directory's files are RunDir's, and the adapter's own card is written beside its weights.
        return None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = (~torch.isfinite(loss)).to(torch.float32).reshape(1)
        if self.args.world_size > 1:
            bad = self.accelerator.gather(bad)
        if bad.any():
            raise NonFiniteLoss(self.state.global_step + 1, loss.item())
        return loss


@functools.cache
def guarded(trainer_class: type[Trainer]) -> type[Trainer]:
    """`trainer_class` with the Guarded behaviour (TRL's trainers: their evaluation is their own)."""
    return type(f"Guarded{trainer_class.__name__}", (Guarded, trainer_class), {"__module__": __name__})


class GuardedTrainer(Guarded, Trainer):
    """Trainer, Guarded, whose validation loss is the token-weighted mean over the whole set: Trainer's own
    evaluation averages per-batch means, which depends on the eval batch size and the number of processes;
    summing token losses and token counts does not, and its exp() is the perplexity."""

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
