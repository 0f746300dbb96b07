"""Thin helpers behind the notebooks: one idea per module, plain PyTorch.

Modules: data, models, training, memory, plotting (and later lora, quant, subspace, intrinsic).
Imports flow one way: notebooks -> helpers.
"""
