"""Kernels compiled together (``build_together``): one module for a block's kernels, each kernel
computing what it computes alone; a kernel used early, a failed joint compile, a block that
raises, nested blocks and other threads fall back to compiling alone."""
import os
import threading

import numpy as np
import pytest
import torch

import escoin_tvm
from escoin_tvm import prune
from escoin_tvm.kernels import build_together
from escoin_tvm.kernels.build_together import compile_together
from escoin_tvm.kernels.linear.kernel import build_sparse_linear

from helpers import assert_conv_close, random_weight

CONVS = [  # (weight shape, input shape, geometry)
    ((8, 4, 3, 3), (2, 4, 9, 9), {"padding": 1}),
    ((6, 4, 5, 5), (1, 4, 13, 11), {"stride": 2, "padding": (2, 1, 0, 2)}),
    ((8, 4, 3, 3), (3, 4, 10, 10), {"dilation": 2, "groups": 2, "relu": True}),
]


class Compiles(list):
    """The function names of each compiled module; ``threads``: the threads that compiled."""


@pytest.fixture
def joint_compiles(monkeypatch):
    """The modules ``build_together.compile_module`` compiles, as lists of function names."""
    seen = Compiles()
    real = build_together.compile_module

    def counting(mod, target):
        with lock:
            seen.append(sorted(gv.name_hint for gv in mod.get_global_vars()))
            threads.add(threading.get_ident())
        return real(mod, target)

    lock, threads = threading.Lock(), set()
    seen.threads = threads

    monkeypatch.setattr(build_together, "compile_module", counting)
    return seen


def conv_kernels(rng, target="llvm"):
    made = []
    for wshape, shape, geometry in CONVS:
        groups = geometry.get("groups", 1)
        weight = random_weight(rng, (wshape[0], wshape[1] // groups, *wshape[2:]), 0.8)
        bias = rng.standard_normal(wshape[0]).astype(np.float32)
        kernel = escoin_tvm.build_sparse_conv2d(weight, shape, bias=bias, target=target,
                                                **geometry)
        made.append((kernel, weight, bias, shape, geometry))
    return made


def test_a_blocks_kernels_share_one_module_and_each_computes_its_own_layer(joint_compiles):
    rng = np.random.default_rng(0)
    with compile_together():
        made = conv_kernels(rng)
        linear_weight = prune.prune_array(rng.standard_normal((10, 24)).astype(np.float32), 0.8)
        linear = build_sparse_linear(linear_weight, 3, relu=True)
        assert not any(kernel.compiled for kernel, *_ in made) and joint_compiles == []
    assert len(joint_compiles) == 1 and len(joint_compiles[0]) == 4
    assert len({id(kernel.executable) for kernel, *_ in made} | {id(linear.executable)}) == 1
    for kernel, weight, bias, shape, geometry in made:
        x = rng.standard_normal(shape).astype(np.float32)
        assert_conv_close(kernel(x), x, weight, bias=bias, **geometry)
        assert_conv_close(kernel.run_torch(torch.from_numpy(x)).numpy(), x, weight, bias=bias,
                          **geometry)
    x = rng.standard_normal((3, 24)).astype(np.float32)
    expected = np.maximum(x.astype(np.float64) @ linear_weight.T.astype(np.float64), 0)
    np.testing.assert_allclose(linear(x), expected, rtol=1e-5, atol=1e-5)
    assert made[0][0].time(number=2, repeat=1) > 0  # times its own function of the module


def test_many_kernels_compile_in_parts_in_parallel_threads(monkeypatch, joint_compiles):
    monkeypatch.setattr(build_together, "PART_KERNELS", 2)
    rng = np.random.default_rng(8)
    with compile_together():
        made = conv_kernels(rng) + conv_kernels(rng)[:2]
    assert sorted(len(names) for names in joint_compiles) == [2, 2, 2]
    assert len(joint_compiles.threads) == min(3, os.cpu_count())
    assert len({id(kernel.executable) for kernel, *_ in made}) == 3
    for kernel, weight, bias, shape, geometry in made:
        x = rng.standard_normal(shape).astype(np.float32)
        assert_conv_close(kernel(x), x, weight, bias=bias, **geometry)


def test_each_finished_part_is_reported_in_the_blocks_thread(monkeypatch, joint_compiles):
    monkeypatch.setattr(build_together, "PART_KERNELS", 2)
    calls = []
    with compile_together(lambda count, total: calls.append((count, total,
                                                             threading.get_ident()))):
        made = conv_kernels(np.random.default_rng(9)) + conv_kernels(np.random.default_rng(10))
        with compile_together(lambda count, total: calls.append("inner")):
            made += conv_kernels(np.random.default_rng(11))
    assert all(kernel.compiled for kernel, *_ in made)
    assert sorted(count for count, *_ in calls) == [1, 2, 2, 2, 2]  # 9 kernels in 5 parts
    assert {(total, thread) for _, total, thread in calls} == {(9, threading.get_ident())}
    monkeypatch.setattr(build_together, "PART_KERNELS", 8)
    calls.clear()
    with compile_together(lambda count, total: calls.append((count, total))):
        conv_kernels(np.random.default_rng(12))
    assert calls == [(3, 3)]  # one part, compiled in this thread


def test_parts_are_the_fewest_runs_of_nearly_equal_length():
    assert build_together.parts(list(range(17)), 8) == [list(range(6)), list(range(6, 12)),
                                                       list(range(12, 17))]
    assert build_together.parts(list(range(8)), 8) == [list(range(8))]
    assert build_together.parts([], 8) == []


def test_a_kernel_used_inside_the_block_compiles_alone_and_is_not_compiled_again(joint_compiles):
    rng = np.random.default_rng(1)
    with compile_together():
        (early, weight, bias, shape, geometry), *rest = conv_kernels(rng)
        x = rng.standard_normal(shape).astype(np.float32)
        assert_conv_close(early(x), x, weight, bias=bias, **geometry)
        assert early.compiled and joint_compiles == [["main"]]
    assert len(joint_compiles) == 2 and len(joint_compiles[1]) == len(rest)
    assert early.executable is not rest[0][0].executable


def test_a_failed_joint_compile_compiles_each_kernel_alone(monkeypatch, joint_compiles):
    real = build_together.compile_module

    def joint_fails(mod, target):
        if len(mod.get_global_vars()) > 1:
            raise RuntimeError("joint compile failed")
        return real(mod, target)

    monkeypatch.setattr(build_together, "compile_module", joint_fails)
    rng = np.random.default_rng(2)
    with compile_together():
        made = conv_kernels(rng)
    assert all(kernel.compiled and kernel.symbol == "main" for kernel, *_ in made)
    for kernel, weight, bias, shape, geometry in made:
        x = rng.standard_normal(shape).astype(np.float32)
        assert_conv_close(kernel(x), x, weight, bias=bias, **geometry)


def test_the_kernel_at_fault_raises_its_own_error(monkeypatch):
    real = build_together.compile_module
    bad = {}

    def one_fails(mod, target):
        if len(mod.get_global_vars()) > 1 or mod is bad.get("module"):
            raise RuntimeError("this kernel does not compile")
        return real(mod, target)

    monkeypatch.setattr(build_together, "compile_module", one_fails)
    with pytest.raises(RuntimeError, match="this kernel does not compile"):
        with compile_together():
            first, second, third = (kernel for kernel, *_ in conv_kernels(np.random.default_rng(3)))
            bad["module"] = second.module
    assert first.compiled and not second.compiled


def test_a_block_that_raises_leaves_its_kernels_to_compile_on_first_use(joint_compiles):
    rng = np.random.default_rng(4)
    with pytest.raises(KeyError):
        with compile_together():
            kernel, weight, bias, shape, geometry = conv_kernels(rng)[0]
            raise KeyError("the caller's own error")
    assert not kernel.compiled and joint_compiles == []
    x = rng.standard_normal(shape).astype(np.float32)
    assert_conv_close(kernel(x), x, weight, bias=bias, **geometry)


def test_a_nested_block_joins_the_outer_one(joint_compiles):
    rng = np.random.default_rng(5)
    with compile_together():
        with compile_together():
            inner = conv_kernels(rng)
        assert joint_compiles == [] and not inner[0][0].compiled
        outer = conv_kernels(rng)
    assert len(joint_compiles) == 1 and len(joint_compiles[0]) == 2 * len(CONVS)
    assert inner[0][0].executable is outer[0][0].executable


def test_kernels_of_other_threads_are_not_deferred(joint_compiles):
    rng = np.random.default_rng(6)
    made = {}
    with compile_together():
        thread = threading.Thread(target=lambda: made.setdefault("kernels", conv_kernels(rng)))
        thread.start()
        thread.join()
        assert all(kernel.compiled for kernel, *_ in made["kernels"])
    assert joint_compiles == [["main"]] * len(CONVS)


def test_cuda_kernels_compiled_together_hold_each_kernels_code():
    # a CUDA kernel builds without a GPU; each kernel's device function is in the shared code
    rng = np.random.default_rng(7)
    with compile_together():
        made = conv_kernels(rng, target={"kind": "cuda", "arch": "sm_90"})
    source = made[0][0].source
    for i in range(len(made)):
        assert f"escoin_kernel_{i}_kernel" in source
