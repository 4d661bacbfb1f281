import os
import sys
from pathlib import Path

import torch

# The naive reference implementations in tests/ are imported by the tests as a plain module.
sys.path.insert(0, str(Path(__file__).parent))

# Without a GPU, Triton kernels run in Triton's interpreter, which is chosen when triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
