"""SSANet: the model layer, data and evaluation built on the ssanet_ops operators."""
