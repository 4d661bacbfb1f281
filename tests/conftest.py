import sys
from pathlib import Path

# The naive reference implementations in tests/ are imported by the tests as a plain module.
sys.path.insert(0, str(Path(__file__).parent))
