"""The GPU study's dry run (studies/gpu/run.sh with SMOKE=1): its protein, text and bench parts with tiny
settings, each leaving an archive that holds the comparison's summary and every run's metrics. (The finetune
part loads SmolLM2 in five processes, minutes on 2 cores; it is run by hand, see studies/gpu/README.md.)"""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from test_kernels_sparse_gin import CASES
from test_modeling import GENERATION_CASES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # five training processes and a benchmark: minutes on 2 cores
def test_the_dry_run_writes_one_archive_per_part(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = {**os.environ, "SMOKE": "1", "PARTS": "protein text bench", "OUT": str(out), "RUNS": str(runs),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "studies" / "gpu" / "run.sh")], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (out / "study.log").read_text()
    assert "protein: reference/seed0 gin_best/seed0 pna/seed0" in log and "text: standard/seed0 gin/seed0" in log
    for part, comparison in (("protein", "protein_compare_gpu"), ("text", "shakespeare_compare_gpu")):
        with tarfile.open(out / f"{part}.tar.gz") as archive:
            names = archive.getnames()
        assert f"{comparison}/summary.md" in names and f"{comparison}/figures/val_perplexity.png" in names
        metrics = [n for n in names if n.endswith("metrics.jsonl")]
        assert len(metrics) == (3 if part == "protein" else 2)
        assert not any("checkpoint-" in n or n.endswith(".safetensors") for n in names)  # no weights
        assert f"logs/{part}/{'reference' if part == 'protein' else 'gin'}_seed0.log" in names
    with tarfile.open(out / "bench.tar.gz") as archive:
        assert "bench/attention_step.txt" in archive.getnames()
    # One archive per part and the log, nothing else: each run's log lies inside its part's archive.
    assert sorted(path.name for path in out.iterdir()) == ["bench.tar.gz", "protein.tar.gz", "study.log", "text.tar.gz"]


@pytest.mark.slow  # every kernel case in two dtypes and 33 greedy generations: ~20 s on 2 cores
def test_the_correctness_part_judges_every_check_against_its_oracle(tmp_path):
    """On CPU the model's path is the blockwise torch one; on a GPU the same records hold the Triton kernels'."""
    result = subprocess.run([sys.executable, str(ROOT / "studies" / "gpu" / "correctness.py"), str(tmp_path),
                             "--long", "96"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = json.loads((tmp_path / "correctness.json").read_text())
    kernels = {(r["case"], r["path"], r["dtype"], r["quantity"], r["q_len"]) for r in records if r["check"] == "kernels"}
    assert len(kernels) == len([r for r in records if r["check"] == "kernels"])  # no check twice
    assert {case for case, *_ in kernels} == set(CASES)
    assert {(path, dtype) for _, path, dtype, *_ in kernels} == {
        (path, dtype) for path in ("model", "torch_blockwise") for dtype in ("fp32", "bf16")}
    assert {("causal", 96), ("padded_bool", 96), ("causal", 37)} <= {(case, q_len) for case, *_, q_len in kernels}
    generation = {(r["case"], r["path"]) for r in records if r["check"] == "generation"}
    assert {case for case, _ in generation} == {f"{k}/{o}" for k, o in GENERATION_CASES} | {"sparse_gin/llama"}
    assert {path for _, path in generation} == {"default_cache", "static_cache", "device_vs_cpu"}
    judged = [r for r in records if r["passed"] is not None]
    assert all(r["passed"] and r["error"] <= r["tolerance"] for r in judged)
    # Only bf16's α/τ gradients go unjudged; every fp32 quantity is judged.
    assert {(r["dtype"], r["quantity"]) for r in records if r["passed"] is None} == {("bf16", "grad_sharpening")}
    assert f"{len(judged)} of {len(judged)} checks passed" in result.stdout
