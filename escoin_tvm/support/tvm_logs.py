"""TVM's own log lines that speak to TVM's developers, not to escoin-tvm's users, left out.

TVM's C++ code logs straight to the process's stderr: a compile of a model with circular padding
prints a line per gather ("Fast mode segfaults when there are out-of-bounds indices": the
indices escoin-tvm's models gather with are in bounds), an export a line per memory scope
("Scope Saving:") and a load of the exported module one per memory scope again ("Scope Loaded:"). ``without_tvm_noise`` captures stderr at the file-descriptor level while TVM
works and passes on every other line once it is done.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager

NOISE = [re.compile(pattern) for pattern in (
    r"Warning: Fast mode segfaults when there are out-of-bounds indices",
    r"Warning: Scope Saving:",
    r"Warning: Scope Loaded:",
)]


@contextmanager
def without_tvm_noise():
    """Runs the body with stderr captured; its lines, less the known noise, follow after."""
    try:
        stderr_fd = sys.__stderr__.fileno() if sys.__stderr__ else 2
    except (AttributeError, OSError, ValueError):  # no real stderr (an embedded interpreter)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(stderr_fd)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), stderr_fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, stderr_fd)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(True)
                    if not any(pattern.search(line) for pattern in NOISE)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
