"""Tasks: where a run's examples come from and what is measured on them (the interface is in `base.py`).

    protein   the paper's secondary-structure task, trained from scratch
    text      any corpus, for language modelling from scratch or on top of a pretrained model
    instruct  any instruction data in TRL's shapes (text, prompt/completion, messages), fine-tuning a pretrained model
    gsm8k     the instruct preset for grade-school maths word problems (bundled), scored by exact match
    folio     the instruct preset for first-order-logic reasoning (bundled), scored by label accuracy
    mqar      Zoology's multi-query associative recall, generated from a seed, trained from scratch
    khop      k-hop induction heads (Sanford, Hsu & Telgarsky 2024), generated from a seed, trained from scratch

A run config picks one with `data.task`; the rest of its `data` section is that task's settings class.
"""

from ginformer.tasks.base import Column, Generation, HeldOut, Losses, Scores, Splits, Task
from ginformer.tasks.instruct import FolioTask, GSM8KTask, InstructTask
from ginformer.tasks.khop import KHopTask
from ginformer.tasks.mqar import MQARTask
from ginformer.tasks.protein import ProteinTask
from ginformer.tasks.text import TextTask

TASKS: dict[str, type[Task]] = {
    task.name: task for task in (ProteinTask, TextTask, InstructTask, GSM8KTask, FolioTask, MQARTask, KHopTask)
}

__all__ = ["TASKS", "Column", "Generation", "HeldOut", "Losses", "Scores", "Splits", "Task"]
