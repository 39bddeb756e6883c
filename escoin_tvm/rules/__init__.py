"""dlight schedule rules escoin-tvm adds to TVM's for the layers that stay dense: one rule per
file, as in TVM's ``s_tir/dlight/gpu/``; ``apply`` returns None where a rule does not apply."""
from .skinny_matmul import SkinnyMatmul

__all__ = ["SkinnyMatmul"]
