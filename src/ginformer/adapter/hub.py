"""Where a saved Sparse-GIN adapter lives and what its files say: a local directory or a hub repository, in either
of the two layouts an adapter is written in, and the model card beside it.

    peft's layout (`SparseGINModel.save_pretrained`)    adapter_config.json + adapter_model.safetensors + README.md
    Trainer's layout (any checkpoint-N/, save_model)    model.safetensors: the model's state dict, which for a
                                                        SparseGINModel is its adapter weights plus `_extra_state`,
                                                        the same JSON as adapter_config.json, as UTF-8 bytes

Trainer writes the state dict of any module that is not a transformers or peft model, so a Sparse-GIN checkpoint
describes itself without a Trainer subclass; both layouts load with `SparseGINModel.from_pretrained` and
`AutoSparseGINModelForCausalLM.from_pretrained`. peft writes the first layout too, for a Sparse-GIN adapter it wraps
(adapter/tuner.py: `PeftModel.save_pretrained`, and Trainer's checkpoints of a PeftModel), and reads it back with
`PeftModel.from_pretrained`: adapter_config.json names the adapter's `peft_type`, and the weights' keys are the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ginformer.data.rows import HUB_ID
from ginformer.errors import CheckpointError, MissingInput

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
TRAINER_WEIGHTS_NAME = "model.safetensors"  # what Trainer names the state dict of a module it cannot save_pretrained
MODEL_CARD_NAME = "README.md"
EXTRA_STATE_KEY = "_extra_state"  # nn.Module's key for get_extra_state(), at the root of the state dict
ADAPTER_TYPE = "sparse_gin"
PEFT_TYPE = "SPARSE_GIN"  # the adapter's type in peft's registries (adapter/tuner.py)


def describe(config: dict[str, Any], base_name: str | None, base_model: dict[str, Any], attn_implementation: str,
             adapted_layers: list[int]) -> dict[str, Any]:
    """What adapter_config.json holds: the adapter's config and the base it was trained on (peft's key names it)."""
    return {
        "adapter_type": ADAPTER_TYPE,
        "peft_type": PEFT_TYPE,
        "base_model_name_or_path": base_name,
        "config": config,
        "base_model": base_model,
        "attn_implementation": attn_implementation,
        "adapted_layers": adapted_layers,
    }


def write_description(directory: Path, payload: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")


def encode_payload(payload: dict[str, Any]) -> Tensor:
    """The adapter's description as a uint8 tensor: safetensors files hold tensors only."""
    return torch.frombuffer(bytearray(json.dumps(payload).encode()), dtype=torch.uint8)


def decode_payload(state: Tensor, where: str) -> dict[str, Any]:
    try:
        payload = json.loads(bytes(state.to(torch.uint8).cpu().tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{where}: {EXTRA_STATE_KEY} is not a Sparse-GIN adapter description ({err})") from None
    check_adapter_type(payload, where)
    return payload


def check_adapter_type(payload: Any, where: str) -> None:
    kind = payload.get("adapter_type") if isinstance(payload, dict) else None
    if kind != ADAPTER_TYPE:
        raise CheckpointError(
            f"{where}: adapter_type={kind!r}, expected {ADAPTER_TYPE!r} (not a Sparse-GIN adapter)"
        )
    missing = [key for key in ("config", "base_model") if key not in payload]
    if missing:
        raise CheckpointError(f"{where}: missing {', '.join(missing)}")


def resolve_adapter_dir(
    path_or_hub_id: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local directory as given, else the hub repository's files (from the local cache when offline)."""
    path = Path(path_or_hub_id)
    if path.is_dir():
        return path
    if isinstance(path_or_hub_id, Path) or not HUB_ID.match(str(path_or_hub_id)) or "/" not in str(path_or_hub_id):
        raise MissingInput(f"adapter directory not found: {path} (and it is not a hub id of the form owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot = snapshot_download(
            str(path_or_hub_id), revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, TRAINER_WEIGHTS_NAME, MODEL_CARD_NAME],
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise MissingInput(
            f"{path_or_hub_id}: no local directory of that name, and the hub repository could not be read "
            f"({type(err).__name__}: {err})"
        ) from None
    return Path(snapshot)


def read_description(config_file: Path) -> dict[str, Any]:
    """The description in an adapter_config.json, checked to be a Sparse-GIN adapter's."""
    try:
        payload = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON: {err}") from None
    check_adapter_type(payload, str(config_file))
    return payload


def read_adapter(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(description, adapter tensors) of an adapter saved in either layout (module docstring)."""
    config_file = directory / CONFIG_NAME
    if config_file.is_file():
        return read_description(config_file), _load_tensors(directory / WEIGHTS_NAME)
    trainer_file = directory / TRAINER_WEIGHTS_NAME
    if trainer_file.is_file():
        tensors = _load_tensors(trainer_file)
        if EXTRA_STATE_KEY not in tensors:
            raise CheckpointError(f"{trainer_file} has no {EXTRA_STATE_KEY}: it is not a Sparse-GIN checkpoint")
        return decode_payload(tensors.pop(EXTRA_STATE_KEY), str(trainer_file)), tensors
    raise MissingInput(
        f"{directory}: neither {CONFIG_NAME} (save_pretrained) nor {TRAINER_WEIGHTS_NAME} (a Trainer checkpoint) "
        "is there: not a saved Sparse-GIN adapter"
    )


def _load_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise MissingInput(f"{path} not found: the adapter's weights are missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}): the file is truncated or corrupt") from None


def model_card(
    payload: dict[str, Any], trainable_parameters: int, data: str | None = None,
    metrics: dict[str, float] | None = None,
) -> str:
    """README.md for a saved adapter, as peft writes one: what it adapts, how, how big, on what, how well."""
    base = payload["base_model_name_or_path"] or "(unnamed)"
    front = ["---", "library_name: ginformer", "tags:", "- sparse-gin", "- ginformer"]
    if HUB_ID.match(base) and "/" in base:
        front.append(f"base_model: {base}")
    front.append("---")
    lines = [
        *front,
        "",
        "# Sparse-GIN adapter",
        "",
        f"A Sparse-GIN adapter ({trainable_parameters:,} trainable parameters) on the frozen base model `{base}` "
        f"({payload['base_model']['architecture']}, {payload['base_model']['num_hidden_layers']} layers): each "
        "decoder layer adds a small GIN over the graph of its own attention, after *Graph-Aware Isomorphic "
        "Attention for Adaptive Dynamics in Transformers* (Buehler, 2025).",
        "",
        "```python",
        "from ginformer.adapter import AutoSparseGINModelForCausalLM",
        "",
        'model = AutoSparseGINModelForCausalLM.from_pretrained("<this directory or hub id>")',
        "```",
        "",
    ]
    if data is not None:
        lines += ["## Training data", "", data, ""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4g} |" for name, value in metrics.items()]
        lines.append("")
    lines += ["## Adapter configuration", "", "```json", json.dumps(payload["config"], indent=2), "```", ""]
    return "\n".join(lines)
