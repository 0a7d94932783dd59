"""Triton kernels of the fused engine (the kernels issue)."""
