"""``torch.compile(model, backend="escoin")``: the backend (``backend.py``), the custom operator
its Escoin kernels run as (``ops.py``) and the graph rewrite (``graph.py``). Importing
escoin_tvm registers the backend under the name "escoin"."""
from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

from .backend import escoin_backend, last_report

if "escoin" not in _COMPILER_FNS:
    register_backend(escoin_backend, name="escoin")

__all__ = ["escoin_backend", "last_report"]
