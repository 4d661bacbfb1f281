"""Fused computations for Sparse-GIN: its graph by blocks of query rows (graph_blocks.py), the blockwise A'·Z in
torch (sparse_gin.py) and as Triton kernels for CUDA (triton_sparse_gin.py, imported only where triton is installed).
"""
