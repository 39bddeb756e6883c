"""The skinny-matmul schedule rule (fully-connected layers at small batch on CUDA)."""
import pytest
import torch
import tvm
from tvm import te, topi

import escoin_tvm
from escoin_tvm.rules.skinny_matmul import MAX_ROWS, SkinnyMatmul, _k_split
from escoin_tvm.support.target import resolve_target

CUDA = resolve_target({"kind": "cuda", "arch": "sm_90"})


def linear_func(rows, depth, cols, bias=True, relu=True):
    """``relu(x @ w + b)`` as the fused PrimFunc Relax makes of a torch Linear (+ ReLU)."""
    x = te.placeholder((rows, depth), name="x")
    w = te.placeholder((depth, cols), name="w")
    k = te.reduce_axis((0, depth), "k")
    out = te.compute((rows, cols), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k), name="matmul")
    params = [x, w]
    if bias:
        b = te.placeholder((cols,), name="b")
        out = te.compute((rows, cols), lambda i, j: out[i, j] + b[j], name="T_add")
        params.append(b)
    if relu:
        out = topi.nn.relu(out)
    return te.create_prim_func([*params, out])


def cuda_source(module) -> str:
    sources = [m.inspect_source() for m in module.imports if m.kind == "cuda"]
    return "\n".join(sources + [cuda_source(m) for m in module.imports])


@pytest.mark.parametrize("rows,depth,cols", [(2, 4096, 1000), (16, 9216, 4096), (25, 300, 257),
                                             (64, 2048, 1000), (3, 256, 256)])
def test_rule_schedules_skinny_products_and_cuda_code_generates(rows, depth, cols):
    sch = SkinnyMatmul().apply(linear_func(rows, depth, cols), CUDA, False)
    assert sch is not None
    source = cuda_source(tvm.compile(sch.mod, target=CUDA).mod)
    kernels = source.count("__global__ void") // 2  # declaration + definition
    split = _k_split(rows, depth, 1)
    assert kernels == (2 if split > 1 else 1)
    assert "float4" in source or cols % 4  # the weight stream is vectorised when it can be


@pytest.mark.parametrize("func", [
    linear_func(1, 4096, 4096),  # batch 1: dlight's GEMV
    linear_func(MAX_ROWS + 1, 4096, 4096),  # wide enough for a tiled GEMM
    linear_func(16, 64, 4096),  # too little to stream
], ids=["one-row", "too-many-rows", "short-k"])
def test_rule_declines_other_products(func):
    assert SkinnyMatmul().apply(func, CUDA, False) is None


def test_rule_declines_batched_matmul_and_convolution():
    a = te.placeholder((4, 16, 512), name="a")
    b = te.placeholder((4, 512, 512), name="b")
    batched = te.create_prim_func([a, b, topi.nn.batch_matmul(a, b, transpose_b=False)])
    data = te.placeholder((2, 16, 32, 32), name="data")
    weight = te.placeholder((32, 16, 3, 3), name="weight")
    conv = te.create_prim_func([data, weight, topi.nn.conv2d_nchw(data, weight, 1, 1, 1)])
    for func in (batched, conv):
        assert SkinnyMatmul().apply(func, CUDA, False) is None
    assert SkinnyMatmul().apply(linear_func(16, 512, 512), resolve_target("llvm"), False) is None


def mlp(depth=300, hidden=257, out=1000):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(depth, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, out, bias=False)).eval()


def test_compile_uses_the_rule_for_cuda_and_the_baseline_does_not():
    x = torch.randn(16, 300)
    ours = cuda_source(escoin_tvm.compile(mlp(), (x,), target=CUDA).executable.mod)
    stock = cuda_source(escoin_tvm.compile(mlp(), (x,), target=CUDA,
                                           dispatch_by="none").executable.mod)
    assert "_rf_ptr" in ours  # the split-K partial sums
    assert "_rf_ptr" not in stock


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [2, 7, 16, 25, 64])
def test_skinny_linear_layers_match_pytorch_on_gpu(rows):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = mlp().cuda()
    x = torch.randn(rows, 300, device="cuda")
    compiled = escoin_tvm.compile(model, (x,), target="cuda")
    with torch.no_grad():
        out = compiled(x).double()
        ref = model.double()(x.double())
        first = model[0]
        # fp32 rounding scales with sum |x| |w| per output
        scale = torch.relu(x.double().abs() @ first.weight.abs().T + first.bias.abs()) @ \
            model[2].weight.abs().T
    assert torch.isfinite(out).all()
    assert ((out - ref).abs() <= 1e-5 * scale + 1e-6).all(), (out - ref).abs().max().item()
