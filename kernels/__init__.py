"""Triton kernels, installed as ``fastwgan.kernels``.

Every fused op here keeps a plain-PyTorch twin (``*_ref``) in the same module: the twin is the
specification, the CPU path and the fallback.
"""
