"""One call that loads a saved Sparse-GIN adapter together with the base it names, as peft's
`AutoPeftModelForCausalLM` does:

    model = AutoSparseGINModelForCausalLM.from_pretrained("runs/x/adapter")      # or a hub id, or checkpoint-N/
"""

from __future__ import annotations

from pathlib import Path

import torch

from ginformer.errors import CheckpointError
from ginformer.pretrained import load_base_causal_lm

from .hub import read_adapter, resolve_adapter_dir
from .model import SparseGINModel


class AutoSparseGINModelForCausalLM:
    """Not instantiated: `from_pretrained` reads the base named in the adapter's description and attaches it."""

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        is_trainable: bool = False,
        dtype: torch.dtype = torch.float32,
        attn_implementation: str | None = None,
        base_model_name_or_path: str | Path | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        probe_host: bool = True,
    ) -> SparseGINModel:
        """The adapter in `path_or_hub_id` on its base, loaded in `dtype` (the adapter stays float32) with the
        attention implementation it was trained with ("sdpa" for adapters that do not record one) unless
        `attn_implementation` names another: "eager" for bases that have no sdpa (Gemma 2, gpt-oss).

        The base is the one the adapter was saved with ("smollm2", a local directory or a hub id), unless
        `base_model_name_or_path` names another copy of it (a directory moved since, say)."""
        directory = resolve_adapter_dir(path_or_hub_id, revision, cache_dir, local_files_only)
        payload, _ = read_adapter(directory)
        base_name = (base_model_name_or_path or payload.get("base_model_name_or_path")
                     or payload.get("base_model", {}).get("name_or_path"))
        if not base_name:
            raise CheckpointError(f"{directory}: the adapter does not say which base it was trained on; pass "
                                  "base_model_name_or_path")
        attn = attn_implementation or payload.get("attn_implementation", "sdpa")
        base = load_base_causal_lm(base_name, dtype=dtype, attn_implementation=attn)
        return SparseGINModel.from_pretrained(base, directory, is_trainable=is_trainable, probe_host=probe_host)
