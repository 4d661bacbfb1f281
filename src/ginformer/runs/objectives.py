"""Training objectives (`training.method`): what a run's loss is, and so which trainer runs it on which rows.

    sft    next-token cross-entropy on the task's features: transformers' Trainer, every task and model side
    dpo    direct preference optimisation on {prompt, chosen, rejected} rows: TRL's DPOTrainer, on preference rows
           of data.task=instruct (data/instruct.py)
    grpo   group-relative policy optimisation: TRL's GRPOTrainer samples `num_generations` completions per prompt
           and the task's reward scores them (gsm8k: the final number; folio: the label)

DPO and GRPO score the policy against a reference, the frozen base, and only train an adapter on a pretrained
model. TRL is given the base and the method's peft config (Sparse-GIN's SparseGINPeftConfig, LoRA's LoraConfig)
and wraps the base itself: it then takes the model for a peft model and runs the reference with the adapter
switched off, with no second copy of the base (docs/integrations.md). Both adapters start as the base
(Sparse-GIN's λ = 0, LoRA's B = 0), so the first policy is the reference.

Each objective names the training keys it reads (`options`, with their defaults); a key set for an objective that
does not read it is refused. TRL's log entries reach metrics.jsonl under our names (`train_logs`, `eval_logs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments

from ginformer.data.batches import CausalLMCollator
from ginformer.errors import ConfigError
from ginformer.runs.trainers import GuardedTrainer, guarded
from ginformer.tasks import Splits, Task


class Objective:
    """One training objective; see the module docstring."""

    name: ClassVar[str]
    needs: ClassVar[str] = ""  # what a task must offer, for the refusal
    peft_route: ClassVar[bool] = False  # the trainer is given the frozen base and the adapter's peft config
    options: ClassVar[Mapping[str, Any]] = {}  # training keys the objective reads, and their defaults
    train_logs: ClassVar[Mapping[str, str]] = {}  # TRL's log key -> our train event's key
    eval_logs: ClassVar[Mapping[str, str]] = {}  # TRL's eval log key (without "eval_") -> our eval event's key
    cross_entropy: ClassVar[bool] = False  # the loss is next-token cross-entropy: exp() of it is a perplexity
    # The loss estimates one quantity on either split, so val − train is a generalisation gap; GRPO's is a
    # surrogate weighted by each batch's own advantages, and its values on two splits do not compare.
    comparable_across_splits: ClassVar[bool] = True

    def check(self, task: Task, side: str, training) -> None:
        """Refuse settings this objective cannot train, before anything is loaded."""
        if self.peft_route and side != "pretrained":
            raise ConfigError(f"training.method={self.name!r} trains an adapter on a frozen pretrained model against "
                              "that model (ginformer finetune), not a model from scratch")
        if self.name not in task.objectives:
            raise ConfigError(f"training.method={self.name!r} does not apply to data.task={task.name!r}, which "
                              f"trains with {sorted(task.objectives)}{self.needs}")
        for key in sorted(OPTIONS):
            if getattr(training, key) is not None and key not in self.options:
                users = [o.name for o in OBJECTIVES.values() if key in o.options]
                raise ConfigError(f"training.{key} applies to training.method {' or '.join(users)}, not "
                                  f"{self.name!r}: remove it")

    def option(self, training, key: str) -> Any:
        value = getattr(training, key)
        return self.options[key] if value is None else value

    def arguments_class(self) -> type[TrainingArguments]:
        return TrainingArguments

    def arguments(self, training, task: Task) -> dict[str, Any]:
        """The objective's own arguments for `arguments_class`, beside TrainingArguments'."""
        return {}

    def splits(self, task: Task, tokenizer: PreTrainedTokenizerBase, training) -> Splits:
        return task.datasets(tokenizer)

    def trainer(self, task: Task, tokenizer: PreTrainedTokenizerBase, splits: Splits, **common) -> Trainer:
        """The trainer; `common` holds model, args, callbacks and (on the peft route) peft_config."""
        return GuardedTrainer(train_dataset=splits.train, eval_dataset=splits.val, processing_class=tokenizer,
                              data_collator=CausalLMCollator(pad_token_id=tokenizer.pad_token_id), **common)


class SFT(Objective):
    name = "sft"
    cross_entropy = True


class DPO(Objective):
    name = "dpo"
    needs = " (DPO reads preference rows: data.task=instruct on a file with prompt, chosen and rejected columns)"
    peft_route = True
    options = {"beta": 0.1}  # TRL's and the DPO paper's
    train_logs = {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin"}
    eval_logs = {"rewards/accuracies": "val_reward_accuracy", "rewards/margins": "val_reward_margin"}

    def arguments_class(self) -> type[TrainingArguments]:
        import trl

        return trl.DPOConfig

    def arguments(self, training, task: Task) -> dict[str, Any]:
        # Rows longer than data.max_length were dropped whole (tasks/instruct.py); TRL cuts none.
        return {"beta": self.option(training, "beta"), "max_length": None}

    def splits(self, task: Task, tokenizer: PreTrainedTokenizerBase, training) -> Splits:
        return task.preference_splits(tokenizer)

    def trainer(self, task: Task, tokenizer: PreTrainedTokenizerBase, splits: Splits, **common) -> Trainer:
        import trl

        return guarded(trl.DPOTrainer)(train_dataset=splits.train, eval_dataset=splits.val,
                                       processing_class=tokenizer, **common)


class GRPO(Objective):
    name = "grpo"
    needs = " (GRPO needs a reward: data.task=gsm8k or folio)"
    peft_route = True
    comparable_across_splits = False
    # beta: the KL term to the reference; TRL's default 0 drops the reference, 0.04 keeps the base as one.
    # max_completion_length None: the task's default_max_new_tokens.
    options = {"beta": 0.04, "num_generations": 4, "max_completion_length": None}
    train_logs = {"reward": "reward", "reward_std": "reward_std", "kl": "kl",
                  "completions/mean_length": "completion_length"}
    eval_logs = {"reward": "val_reward"}

    def check(self, task: Task, side: str, training) -> None:
        super().check(task, side, training)
        generations = self.option(training, "num_generations")
        if generations < 2:
            raise ConfigError(f"training.num_generations={generations}: GRPO compares completions of a prompt, at "
                              "least 2")
        for key, batch in (("per_device_train_batch_size × gradient_accumulation_steps",
                            training.per_device_train_batch_size * training.gradient_accumulation_steps),
                           ("per_device_eval_batch_size", training.per_device_eval_batch_size)):
            if batch % generations:
                raise ConfigError(f"training.{key} = {batch} must be a multiple of training.num_generations = "
                                  f"{generations}: each batch holds whole groups of one prompt's completions")

    def completion_length(self, training, task: Task) -> int:
        return self.option(training, "max_completion_length") or task.default_max_new_tokens

    def arguments_class(self) -> type[TrainingArguments]:
        import trl

        return trl.GRPOConfig

    def arguments(self, training, task: Task) -> dict[str, Any]:
        return {"beta": self.option(training, "beta"), "num_generations": self.option(training, "num_generations"),
                "max_completion_length": self.completion_length(training, task)}

    def splits(self, task: Task, tokenizer: PreTrainedTokenizerBase, training) -> Splits:
        return task.prompt_splits(tokenizer, self.completion_length(training, task))

    def trainer(self, task: Task, tokenizer: PreTrainedTokenizerBase, splits: Splits, **common) -> Trainer:
        import trl

        stop = task.stop_string()

        def reward(completions, reference, **_):
            """The task's reward of each completion's text (a chat completion is a list of messages)."""
            texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
            return task.reward([text.split(stop, 1)[0] if stop else text for text in texts], reference)

        reward.__name__ = f"{task.name}_reward"  # TRL logs each reward function's mean under its name
        return guarded(trl.GRPOTrainer)(reward_funcs=reward, train_dataset=splits.train, eval_dataset=splits.val,
                                        processing_class=tokenizer, **common)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (SFT(), DPO(), GRPO())}
OPTIONS = frozenset(key for o in OBJECTIVES.values() for key in o.options)  # TrainingSettings keys objectives read
