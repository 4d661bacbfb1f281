"""Fused computations: Sparse-GIN's blockwise A'·Z in torch (sparse_gin.py) and as Triton kernels for CUDA
(triton_sparse_gin.py, imported only where triton is installed)."""
