"""A non-editable install works outside the checkout: the wheel carries the configs and the bundled data as
package data (ginformer.configs, ginformer.bundled), and the code finds them through importlib.resources."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_every_config_and_bundled_file(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("ginformer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"ginformer/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    data = {f"ginformer/bundled/{p.relative_to(ROOT / 'data')}" for p in (ROOT / "data").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}
    assert configs and configs <= names
    assert "ginformer/bundled/tinyshakespeare/input.txt" in data and data <= names
    assert {"ginformer/runs/train.py", "ginformer/tasks/text.py", "ginformer/viz/run_figures.py"} <= names
    explorer = {f"ginformer/viz/explorer/explorer.{ext}" for ext in ("html", "css", "js")}  # inlined into every page
    assert explorer <= names
