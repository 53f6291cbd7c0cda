"""Triton kernels, installed as ``fastwgan.kernels``.

Every fused op here keeps a plain-PyTorch twin (``*_ref``) in the same module: the twin is the
specification, the CPU path and the fallback.
"""
from fastwgan.kernels.rmsprop_clip import rmsprop_clip, rmsprop_clip_ref  # noqa: F401
from fastwgan.kernels.bn_act import bn_act, bn_act_ref  # noqa: F401
