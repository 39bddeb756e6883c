"""Reference convolution and comparison shared by the tests."""
import numpy as np
import torch
import torch.nn.functional as F

from escoin_tvm.prune import prune_array
from escoin_tvm.kernels.conv_spec import normalize_padding


def random_weight(rng, shape, sparsity, scale=1.0):
    weight = (rng.standard_normal(shape) * scale).astype(np.float32)
    return prune_array(weight, sparsity)


def reference(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, relu=False,
              absolute=False):
    """PyTorch conv2d in float64 (asymmetric padding through F.pad). With ``absolute`` it
    convolves |x| with |w|: the scale fp32 rounding error is proportional to."""
    top, left, bottom, right = normalize_padding(padding)
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    w = torch.as_tensor(np.asarray(weight), dtype=torch.float64)
    b = None if bias is None else torch.as_tensor(np.asarray(bias), dtype=torch.float64)
    if absolute:
        x, w, b = x.abs(), w.abs(), None if b is None else b.abs()
    x = F.pad(x, (left, right, top, bottom))
    out = F.conv2d(x, w, b, stride=stride, dilation=dilation, groups=groups)
    return (torch.relu(out) if relu and not absolute else out).numpy()


# Unit roundoff of a result stored in each dtype (round to nearest: half a unit in the last place)
ROUNDOFF = {"float32": 0.0, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}


def assert_conv_close(out, x, weight, dtype="float32", half_chunk=0, **conv_args):
    """Result within 1e-5 of the float64 reference, relative to sum |w| |x| per output (the
    float32 sum), plus the rounding of a ``dtype`` output to it; ``x`` and ``weight`` are the
    values the kernel saw (of ``dtype``). ``half_chunk`` > 0: the kernel sums runs of that many
    non-zeros in ``dtype`` first, each FMA rounding to it (at most ``half_chunk`` roundings of
    at most sum |w| |x| each)."""
    x, weight = (np.asarray(a).astype(np.float64) for a in (x, weight))
    if conv_args.get("bias") is not None:
        conv_args["bias"] = np.asarray(conv_args["bias"]).astype(np.float64)
    ref = reference(x, weight, **conv_args)
    scale = reference(x, weight, absolute=True, **{k: v for k, v in conv_args.items() if k != "relu"})
    out = np.asarray(out).astype(np.float64)
    assert out.shape == ref.shape
    assert np.isfinite(out).all()
    sums = half_chunk * ROUNDOFF[dtype] * scale
    err = np.abs(out - ref) - (1e-5 * scale + sums + ROUNDOFF[dtype] * np.abs(ref) + 1e-6)
    worst = np.unravel_index(err.argmax(), err.shape)
    assert err.max() <= 0, f"max error over tolerance by {err.max()} at {worst}"


def outcomes_in_children(script: str, paths, *args) -> dict:
    """{path: outcome} of ``script`` run over ``paths`` in child processes (python -c script
    *args, the paths on stdin). The script prints "start PATH" before each one and "OUTCOME PATH"
    after it; a child that dies on a path records "crash (exit N)" for it, and a new child goes
    on with the rest."""
    import subprocess
    import sys

    results, todo = {}, [str(p) for p in paths]
    while todo:
        child = subprocess.run([sys.executable, "-c", script, *map(str, args)],
                               input="\n".join(todo), capture_output=True, text=True, timeout=600)
        started = None
        for line in child.stdout.splitlines():
            word, path = line.split()[:2]
            if word == "start":
                started = path
            else:
                results[path], started = word, None
        if started is not None:
            results[started] = f"crash (exit {child.returncode})"
        elif child.returncode:
            raise AssertionError(child.stderr)
        todo = [p for p in todo if p not in results]
    return results
