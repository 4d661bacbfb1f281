"""ginformer installs into a researcher's environment without replacing what is there, and its declared lower
bounds hold: a fresh venv gets the locked torch and every other runtime dependency at the lowest version
pyproject.toml declares, then the built wheel; no package may change, and there a GIN model trains a few steps,
Sparse-GIN wraps and saves a tiny Llama, and `ginformer --help` answers."""

import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a fresh environment: a minute or more even from uv's cache

SPARSE_GIN_WRAPS_AND_SAVES_A_TINY_LLAMA = """
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from ginformer.adapter import SparseGINConfig, get_sparse_gin_model
torch.manual_seed(0)
base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2)).eval()
ids = torch.randint(0, 64, (1, 12))
expected = base(ids).logits
model = get_sparse_gin_model(base, SparseGINConfig(d_gnn=8))
torch.testing.assert_close(model(ids).logits, expected)  # λ starts at 0: the adapted model is its base
model.save_pretrained(sys.argv[1])
"""


def lowest_supported() -> dict[str, str]:
    """{name: its declared lower bound} for every runtime dependency but torch, which stays as locked (another
    torch here is a CUDA build of gigabytes)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lowest = {}
    for requirement in map(Requirement, declared):
        (bound,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        lowest[requirement.name] = bound
    lowest.pop("torch")
    return lowest


def locked(name: str) -> str:
    (line,) = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if line.startswith(f"{name}==")]
    return line


def uv(*args: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "-m", "uv", *args], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def installed(python: Path, env: dict) -> dict[str, str]:
    packages = json.loads(uv("pip", "list", "--format", "json", "--python", str(python), env=env))
    return {p["name"].lower().replace("_", "-"): p["version"] for p in packages}


def run(command: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_the_wheel_installs_beside_the_lowest_supported_versions_and_replaces_none(tmp_path):
    # The Makefile exports where torch's CPU wheel lies; run alone, the test looks where this kind of machine has it.
    env = {**os.environ, "UV_FIND_LINKS": os.environ.get("UV_FIND_LINKS", "/opt/wheels")}
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    uv("venv", "--quiet", "--python", sys.executable, str(venv), env=env)
    lowest = lowest_supported()
    uv("pip", "install", "--quiet", "--python", str(python), locked("torch"),
       *(f"{name}=={version}" for name, version in lowest.items()), env=env)
    before = installed(python, env)
    assert not [name for name in before if name.startswith("nvidia-")]  # the CPU torch, not a CUDA build
    assert {name: Version(before[name]) for name in lowest} == {name: Version(v) for name, v in lowest.items()}

    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(wheels), str(ROOT)], cwd=tmp_path)
    (wheel,) = wheels.glob("ginformer-*.whl")
    uv("pip", "install", "--quiet", "--python", str(python), str(wheel), env=env)
    after = installed(python, env)
    assert after.pop("ginformer") == "0.1.0"
    assert after == before

    # Outside the checkout, so the installed package (its configs and bundled data) is what runs.
    assert "pretrain" in run([str(venv / "bin" / "ginformer"), "--help"], cwd=tmp_path)
    run([str(venv / "bin" / "ginformer"), "pretrain", "--config", "shakespeare_char_cpu.yaml",
         "--set", "model.attention_kind=gin", "--set", "model.num_hidden_layers=1", "--set", "model.hidden_size=32",
         "--set", "model.intermediate_size=64", "--set", "training.max_steps=3", "--set", "training.warmup_steps=1",
         "--set", "training.logging_steps=1", "--set", "training.eval_steps=3", "--set", "data.max_val_blocks=4",
         "--set", f"training.output_root={tmp_path / 'runs'}"], cwd=tmp_path)
    run_dir = tmp_path / "runs" / "shakespeare_char_cpu"
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [event for event in events if event["event"] == "train"]
    assert [event["step"] for event in trained] == [1, 2, 3] and all(math.isfinite(e["train_loss"]) for e in trained)
    assert json.loads((run_dir / "model" / "config.json").read_text())["attention_kind"] == "gin"
    run([str(python), "-c", SPARSE_GIN_WRAPS_AND_SAVES_A_TINY_LLAMA, str(tmp_path / "adapter")], cwd=tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
