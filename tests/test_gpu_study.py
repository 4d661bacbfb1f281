"""The GPU study's dry run (studies/gpu/run.sh with SMOKE=1): its protein, text and bench parts with tiny
settings, each leaving an archive that holds the comparison's summary and every run's metrics. (The finetune
part loads SmolLM2 in five processes, minutes on 2 cores; it is run by hand, see studies/gpu/README.md.)"""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

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
