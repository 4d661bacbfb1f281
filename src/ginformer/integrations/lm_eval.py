"""lm-evaluation-harness on any model of ginformer: a run (trained from scratch, Sparse-GIN, LoRA, the bare base) or
a model in memory, scored on lm-eval's tasks, offline on local data.

    ginformer evaluate --run runs/<name> --lm-eval gsm8k_bundled [--limit 50] [--num-fewshot 5]
    ginformer evaluate --run runs/<name> --lm-eval my_task --lm-eval-tasks my_tasks/   (a task YAML on a local file)

Tasks are named as lm-eval names them (its own tasks read their data from the hub, which an offline machine does
not reach), or are task YAML files: a directory or file given as `task_paths` is searched for them, and a YAML
whose `dataset_path: json` and `dataset_kwargs: {data_files: ...}` name a local JSON file runs offline.

A task YAML runs Python code when it names any (lm-eval's `!function module.name` tags, in its `process_docs`,
`doc_to_text`, metrics, filters): lm-eval imports the module beside the YAML when that task is named. Name only
task files you trust, as you would run their code; ginformer notes each such file it is given.

`gsm8k_bundled` is lm-eval's own GSM8K task (its prompt "Question: ...\\nAnswer:", 5 shots, and its strict-match
and flexible-extract exact-match filters: the numbers published for GSM8K) on local rows: the test documents are
the validation split that ginformer's gsm8k task holds out of the bundled data/gsm8k/train.jsonl (or of
`gsm8k_source`, any GSM8K-format file), so a fine-tuning run with the default split never trained on them; the
shots come from the other rows. They are GSM8K training-set problems, not its test set: comparable in kind to
published numbers, not the same rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedTokenizerBase

from ginformer.errors import ConfigError, DataError, MissingExtra, MissingInput

BUNDLED_GSM8K = "gsm8k_bundled"
INSTALL = "pip install 'ginformer[integrations]'"

logger = logging.getLogger(__name__)


def require_lm_eval() -> None:
    """A MissingExtra naming the extra to install when lm-evaluation-harness is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name != "lm_eval":  # lm-eval is there, one of its own dependencies is not: its traceback says which
            raise
        raise MissingExtra(f"lm-eval tasks need lm-evaluation-harness, which is not installed: {INSTALL}",
                           name="lm_eval") from None


def gsm8k_task(source: str | Path | None = None) -> dict[str, Any]:
    """lm-eval's GSM8K task config on local rows (module docstring); `source` None is the bundled file."""
    require_lm_eval()
    import lm_eval.tasks

    # lm-eval has no public call that returns a task's config without building the task (which downloads its
    # data), so its task file is read as what it is, plain YAML in lm-eval's documented task format: straight from
    # lm-eval's task folder, as indexing all of its ~15,000 tasks takes seconds. tests/test_lm_eval.py checks that
    # the file stays plain (no `include`, no `!function`) and that lm-eval's own index points at it.
    config = yaml.safe_load((Path(lm_eval.tasks.__file__).parent / "gsm8k" / "gsm8k.yaml").read_text())
    config.update(
        task=BUNDLED_GSM8K,
        dataset_path="json",
        dataset_name=None,
        custom_dataset=partial(_gsm8k_splits, source),
        test_split="test",
        training_split="train",
        fewshot_split="train",
    )
    config.pop("tag", None)  # not one of lm-eval's math_word_problems: its rows are others
    return config


def _gsm8k_splits(source: str | Path | None, **_lm_eval_metadata: Any):
    """{"train", "test"} datasets of GSM8K rows: ginformer's gsm8k split of `source` (its defaults)."""
    from datasets import Dataset, DatasetDict

    from ginformer.tasks.instruct import GSM8KTask, InstructSettings

    task = GSM8KTask(InstructSettings(task="gsm8k", source="bundled" if source is None else str(source)))
    train, test = task.splits()

    def rows(examples):
        return Dataset.from_list([{"question": e.prompt[-1].content, "answer": e.answer} for e in examples])

    return DatasetDict(train=rows(train), test=rows(test))


def resolve_tasks(tasks: Sequence[str], gsm8k_source: str | Path | None = None) -> list[str | dict[str, Any]]:
    """lm-eval task specs: names and YAML paths as given, `gsm8k_bundled` as its config."""
    if not tasks:
        raise ConfigError("name at least one lm-eval task (e.g. gsm8k_bundled, or a task YAML)")
    if gsm8k_source is not None and BUNDLED_GSM8K not in tasks:
        raise ConfigError(f"local GSM8K data ({gsm8k_source}) is read by the task {BUNDLED_GSM8K} only")
    return [gsm8k_task(gsm8k_source) if task == BUNDLED_GSM8K else task for task in tasks]


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    *,
    task_paths: Sequence[str | Path] = (),
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    gsm8k_source: str | Path | None = None,
) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` on a causal LM in memory; returns its results dict (per task: metric,filter ->
    value, their standard errors, the shots and the number of documents scored)."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    for path in task_paths:
        if not Path(path).exists():
            raise MissingInput(f"lm-eval task path not found: {path} (a task YAML file or a directory of them)")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"num_fewshot must be >= 0, got {num_fewshot}")
    specs = resolve_tasks(tasks, gsm8k_source)
    paths = tuple(str(p) for p in task_paths)
    named = {t for t in specs if isinstance(t, str) and not Path(t).is_file()}
    manager = TaskManager(include_path=list(paths) or None, include_defaults=False)
    if not named <= set(manager.all_tasks):
        manager = _task_manager_with_lm_evals_tasks(paths)
    unknown = sorted(named - set(manager.all_tasks))
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s) {unknown}: use lm-eval's names, {BUNDLED_GSM8K}, or a task YAML "
                          "(with --lm-eval-tasks naming its directory)")
    for path in code_running_task_files(paths):
        logger.info("%s names Python code (!function): lm-eval runs it when that task is evaluated", path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
    try:
        results = simple_evaluate(model=lm, tasks=specs, task_manager=manager, num_fewshot=num_fewshot, limit=limit,
                                  log_samples=False)
    except ConnectionError as err:  # the model is in memory: what lm-eval could not reach is a task's data
        raise DataError(
            f"lm-eval task(s) {', '.join(map(str, tasks))}: {err}: their data is on the Hugging Face Hub, which this "
            "machine cannot reach. Run where it can, or describe the task on a local file (a task YAML with "
            f"dataset_path: json, given with --lm-eval-tasks; or {BUNDLED_GSM8K})"
        ) from None
    return {key: results[key] for key in ("results", "n-shot", "n-samples", "versions") if key in results}


def code_running_task_files(paths: Sequence[str | Path]) -> list[Path]:
    """The task YAML files among `paths` (files, or directories searched recursively) that name Python code."""
    files = [f for p in map(Path, paths) for f in ([p] if p.is_file() else sorted(p.rglob("*.y*ml")))]
    return [f for f in files if f.is_file() and "!function" in f.read_text(errors="replace")]


@lru_cache(maxsize=4)
def _task_manager_with_lm_evals_tasks(paths: tuple[str, ...]):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None)


def evaluate_run_lm_eval(run_dir: str | Path, tasks: Sequence[str], write: bool = True, **options: Any) -> dict:
    """`evaluate_model` on a finished run's model and tokenizer; written to <run>/lm_eval_<tasks>.json."""
    from ginformer.files import atomic_write_text, check_output_file
    from ginformer.runs.evaluate import load_run

    require_lm_eval()  # before the run's model is loaded
    if write:
        check_output_file(output_path(run_dir, tasks), "the lm-eval results file")
    _, model, tokenizer = load_run(run_dir)
    results = evaluate_model(model, tokenizer, tasks, **options)
    if write:
        atomic_write_text(output_path(run_dir, tasks), json.dumps(results, indent=2, default=str) + "\n")
    return results


def output_path(run_dir: str | Path, tasks: Sequence[str]) -> Path:
    from ginformer.runs.run_dir import RunDir

    return RunDir(run_dir).lm_eval(tasks)


def format_results(results: dict[str, Any]) -> str:
    """lm-eval's own results table."""
    from lm_eval.utils import make_table

    return make_table(results)
