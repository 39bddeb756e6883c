import os

import pytest

from escoin_tvm.support.target import has_gpu


def pytest_collection_modifyitems(config, items):
    if not has_gpu():
        skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        # Parallel workers share the GPU: a test that takes all its memory or times kernels
        # would fail because of the others, not because of the code.
        skip = pytest.mark.skip(reason="needs the GPU to itself: run it without -n")
        for item in items:
            if "gpu_exclusive" in item.keywords:
                item.add_marker(skip)
