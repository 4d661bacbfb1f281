import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter, which is chosen when triton is first imported:
# before transformers, whose import brings triton in.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from ginformer.data.instruct import PAPER_END  # noqa: E402
from ginformer.data.reasoning import load_folio, load_gsm8k  # noqa: E402

# The naive reference implementations in tests/ are imported by the tests as a plain module.
sys.path.insert(0, str(Path(__file__).parent))

LAYERS = 2  # of the tiny base model
# A ChatML-like chat template for the tiny base, its end-of-turn marker the tokenizer's end token.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine OpenMP threads stall each other:
    modules that train set `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def task_files(tmp_path_factory):
    """Short GSM8K- and FOLIO-format files, so tiny runs are fast and any file in the format is exercised."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    gsm8k = []
    for i in range(60):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        gsm8k.append({"question": f"Tom has {a} apples and gets {b} more. How many now? ({i})",
                      "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
    folio = []
    for i in range(40):
        label = ["True", "False", "Uncertain", "True"][i % 4]
        folio.append({"story_id": i, "premises": [f"Every cat {i} is small.", f"Rex {i} is a cat."],
                      "conclusion": f"Rex {i} is small.", "label": label})
    for name, rows in (("gsm8k.jsonl", gsm8k), ("folio.jsonl", folio)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, task_files):
    """A tiny random Llama and a byte-level BPE tokenizer, saved as a local base model directory."""
    texts = [line for name in ("gsm8k.jsonl", "folio.jsonl") for line in (task_files / name).read_text().splitlines()]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([*texts, f"### User: ### Assistant: {PAPER_END}"] * 2, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=1,
    ))
    path = tmp_path_factory.mktemp("base")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base_tokenizer(base_dir):
    """base_dir's tokenizer as a trainer gets it, padding with its eos token."""
    loaded = PreTrainedTokenizerFast.from_pretrained(base_dir)
    loaded.pad_token = loaded.eos_token
    return loaded


@pytest.fixture(scope="session")
def gsm8k():
    """The bundled GSM8K rows, read once."""
    return load_gsm8k()


@pytest.fixture(scope="session")
def folio():
    """The bundled FOLIO rows, read once."""
    return load_folio()
