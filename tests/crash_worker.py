"""A training process for test_train.py's crash tests: it trains a tiny run and kills itself with SIGKILL (what
kill -9 sends) at one point, as a pre-empted job or an out-of-memory kill would stop it.

    python crash_worker.py POINT STEP OVERRIDES_JSON

POINT, while checkpoint-STEP is being written:
    weights     model.safetensors is half written
    optimizer   optimizer.pt is half written (the weights are whole)
    rename      every file is written, the directory not yet renamed into place
and `hold`: at the start of step STEP, touch <run>/holding and sleep until killed (a process that holds the lock).
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def tear(path: str) -> None:
    """Leave the first half of a file, as a write cut off midway does, and die."""
    os.truncate(path, os.path.getsize(path) // 2)
    die()


def inject(point: str, step: int):
    """Patch the writer of the file that `point` cuts off; returns the Trainer callbacks it needs."""
    import transformers.modeling_utils
    import transformers.trainer
    from transformers import TrainerCallback

    target = f"checkpoint-{step}"
    if point == "weights":
        save = transformers.modeling_utils.safe_save_file

        def torn_weights(tensors, filename, *args, **kwargs):
            save(tensors, filename, *args, **kwargs)
            if target in str(filename):
                tear(filename)

        transformers.modeling_utils.safe_save_file = torn_weights
    elif point == "optimizer":
        save = torch.save

        def torn_optimizer(obj, f, *args, **kwargs):
            save(obj, f, *args, **kwargs)
            if isinstance(f, (str, os.PathLike)) and target in str(f) and str(f).endswith("optimizer.pt"):
                tear(f)

        torch.save = torn_optimizer
    elif point == "rename":
        rotate = transformers.trainer.rotate_checkpoints

        def before_rename(output_dir, *args, **kwargs):  # Trainer's last act inside its checkpoint directory
            if (Path(output_dir) / target / "trainer_state.json").is_file():
                die()
            return rotate(output_dir, *args, **kwargs)

        transformers.trainer.rotate_checkpoints = before_rename
    elif point == "hold":

        class Hold(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step + 1 == step:
                    (Path(args.output_dir) / "holding").touch()
                    time.sleep(600)

        return [Hold()]
    else:
        raise SystemExit(f"unknown point {point!r}")
    return []


def main() -> None:
    point, step, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    torch.set_num_threads(1)
    from ginformer.runs.config import load_run_settings
    from ginformer.runs.train import train

    callbacks = inject(point, step)
    train(load_run_settings(None, overrides, side="scratch"), callbacks=callbacks)
    raise SystemExit("the run finished: the fault was never reached")


if __name__ == "__main__":
    main()
