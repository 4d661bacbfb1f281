"""Build Sparse-GIN's Triton kernels for an sm_90 GPU without one: `python tests/triton_build.py fp32|bf16`.

Run by tests/test_kernels_triton.py in a process without TRITON_INTERPRET; prints each kernel's name once its PTX
is built. fp32 q/k with a bool mask and IEEE products; bf16 q/k with an additive bf16 mask.
"""

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ginformer.kernels import triton_sparse_gin


def signature(kernel, dtype: str, constants: dict) -> dict:
    """Every argument's type: pointers to q, k (and a bf16 mask) in `dtype`, a bool or fp32 mask, fp32 tensors."""
    low_precision = ("q_ptr", "k_ptr", "mask_ptr") if dtype == "bf16" else ("q_ptr", "k_ptr")
    types = {}
    for name in kernel.arg_names:
        if name in constants:
            types[name] = "constexpr"
        elif name == "mask_ptr" and dtype == "fp32":
            types[name] = "*i1"
        elif name.endswith("_ptr"):
            types[name] = f"*{dtype}" if name in low_precision else "*fp32"
        else:
            types[name] = "fp32" if name in ("scaling", "threshold", "mask_floor") else "i32"
    return types


def build(dtype: str) -> None:
    constants = dict(
        HEADS=9, GROUP=3, HEAD_DIM=64, D_PAD=64, MASK_KIND=1 if dtype == "fp32" else 2, BLOCK_M=32, BLOCK_N=32,
        PRECISION="ieee" if dtype == "fp32" else "tf32", AGGREGATION=0, HAS_EXTERNAL=True, SELF_LOOPS_ONLY=False,
        F_PAD=256, NEED_PARAMS=True, NEED_EXTERNAL=True,
    )
    kernels = triton_sparse_gin._lse_kernel, triton_sparse_gin._forward_kernel, triton_sparse_gin._backward_kernel
    for kernel in kernels:
        used = {name: value for name, value in constants.items() if name in kernel.arg_names}
        source = ASTSource(
            kernel,
            signature(kernel, dtype, used),
            constexprs={(kernel.arg_names.index(name),): value for name, value in used.items()},
        )
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["ptx"], kernel.__name__
        print(kernel.__name__, flush=True)


if __name__ == "__main__":
    build(sys.argv[1])
