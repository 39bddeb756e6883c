"""Helpers every experiment shares: the results folder, result-file names, the environment
record written at the top of each result, and the geometric mean the summaries use.

Result files are named ``<kind>-<gpu>-<label>.<ext>``: ``kind`` says what was run (``layers``,
``networks``, ``tuning``, ``sweep``, ...), ``gpu`` is the short GPU name (``H100``, ``H200``) or
``cpu``, and ``label`` is the run's start time (``YYYYMMDD-HHMMSS``) or, for a report combining
several runs, a word that says what it combines (``all-layers``)."""
from __future__ import annotations

import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional

RESULTS = Path(__file__).resolve().parent / "results"


def stamp() -> str:
    """The label of a run started now."""
    return time.strftime("%Y%m%d-%H%M%S")


def gpu_short_name(name: Optional[str] = None) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100``; the local GPU's when no name is given; ``cpu``
    without a GPU."""
    if name is None:
        try:
            import torch

            name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except ImportError:
            name = None
    if not name:
        return "cpu"
    words = name.replace("NVIDIA", "").split()
    return words[0] if words else "gpu"


def result_path(kind: str, ext: str = "jsonl", gpu: Optional[str] = None,
                label: Optional[str] = None, out: Optional[Path] = None) -> Path:
    """``<out>/<kind>-<gpu>-<label>.<ext>`` (out defaults to experiments/results, gpu to the
    local one, label to the current time); the folder is created."""
    folder = Path(out) if out is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{kind}-{gpu or gpu_short_name()}-{label or stamp()}.{ext}"


def environment() -> dict:
    """What a result was measured with: GPU, driver, library versions, date."""
    import torch
    import tvm

    env = {"torch": torch.__version__, "tvm": tvm.__version__,
           "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch.cuda.is_available():
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                     "--format=csv,noheader"], capture_output=True,
                                    text=True).stdout.strip()
        except OSError:
            driver = "unknown"
        env.update(gpu=torch.cuda.get_device_properties(0).name, driver=driver,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        env.update(gpu=None, cpu=platform.processor() or platform.machine())
    return env


def geomean(values: Iterable[float]) -> float:
    """Geometric mean of the positive values (nan when there is none)."""
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def export_kernel(kernel, path: str) -> None:
    """Writes a built ``SparseConv2dKernel`` to ``path`` (its module) and ``path``.npz (its
    constants: offsets, values, bias), for a worker process to build and the timing process
    to load (``load_kernel``)."""
    import numpy as np

    kernel.executable.export_library(path)
    np.savez(path + ".npz", *kernel.host_constants)


def load_kernel(path: str, dev):
    """(runtime module, its constants on ``dev``) of an ``export_kernel`` file. np.savez keeps
    a bfloat16 array as raw 2-byte values; they come back as ml_dtypes' bfloat16."""
    import numpy as np
    import tvm

    from escoin_tvm.support.dtypes import numpy_dtype

    constants = [tvm.runtime.tensor(a.view(numpy_dtype("bfloat16")) if a.dtype.kind == "V"
                                    else a, dev) for a in np.load(path + ".npz").values()]
    return tvm.runtime.load_module(path), constants

