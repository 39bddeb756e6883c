"""torch.compile(model, backend="escoin") on the CPU: the graph rewrite, the custom operator,
recompiles, what stays with PyTorch, the options; on the GPU, CUDA graphs and measured
dispatch."""
import numpy as np
import pytest
import torch

import escoin_tvm
from escoin_tvm import ArgumentError, prune
from escoin_tvm.torch_compile import backend, last_report


def net(sparsity=0.9, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding="same", bias=False), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 8, 1, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 4))
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
    return prune.magnitude(model, sparsity).eval()


def close(a, b):
    np.testing.assert_allclose(a.detach().cpu().numpy(), b.detach().cpu().numpy(), rtol=1e-4,
                               atol=1e-5)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_sparse_layers_run_on_escoin_kernels_and_match_eager():
    model = net()
    compiled = torch.compile(model, backend="escoin", options={"dense": "eager"})
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        close(compiled(x), model(x))
    layers = [l for l in backend.REPORTS[-1].layers if l.op == "conv2d"]
    assert [l.kernel for l in layers] == ["escoin"] * 3
    assert layers[0].epilogue == "bias+relu; batch norm folded" and layers[1].epilogue == "relu"
    assert "3 of 3 convolutions on Escoin kernels" in last_report()


def test_a_new_batch_size_recompiles_and_still_matches():
    model = net()
    compiled = torch.compile(model, backend="escoin", options={"dense": "eager"})
    with torch.no_grad():
        for batch in (1, 3, 4):
            x = torch.randn(batch, 3, 12, 12)
            close(compiled(x), model(x))
    assert len(backend.REPORTS[-1].layers) == 4  # 3 convolutions and the linear layer


@pytest.mark.parametrize("dense", ["eager", "inductor"])
def test_a_channels_last_model_keeps_its_layout(dense):
    # the kernels compute NCHW; the layers after them, and the output, get the layout the
    # user's model had
    model = torch.nn.Sequential(*list(net())[:5]).to(memory_format=torch.channels_last)
    compiled = torch.compile(model, backend="escoin", options={"dense": dense})
    x = torch.randn(2, 3, 9, 11).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, out = model(x), compiled(x)
    close(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert [l.kernel for l in backend.REPORTS[-1].layers] == ["escoin"] * 2


def test_inductor_compiles_the_rest():
    model = net()
    compiled = torch.compile(model, backend="escoin", mode="reduce-overhead")
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        close(compiled(x), model(x))
        close(compiled(x), model(x))


def test_a_dense_model_is_left_to_pytorch_unchanged():
    model = net(sparsity=0.0)
    compiled = torch.compile(model, backend="escoin", options={"dense": "eager"})
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
    assert all(l.kernel == "dense" and "< threshold" in l.reason
               for l in backend.REPORTS[-1].layers)
    assert len(backend.REPORTS[-1].layers) == 4


def test_what_stays_with_pytorch_says_why():
    model = net()
    x = torch.randn(2, 3, 12, 12)
    compiled = torch.compile(model, backend="escoin", options={"dense": "eager"})
    out = compiled(x)  # gradients on: the weights require them
    assert all("backend runs inference" in l.reason for l in backend.REPORTS[-1].layers)
    close(out, model(x))
    torch._dynamo.reset()
    double = net().double()
    with torch.no_grad():
        torch.compile(double, backend="escoin", options={"dense": "eager"})(x.double())
    assert all("dtype float64" in l.reason for l in backend.REPORTS[-1].layers)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend="escoin", options={"dense": "eager", "threshold": 0.95})(x)
    assert [l.kernel for l in backend.REPORTS[-1].layers] == ["dense"] * 4


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_models_run_in_their_dtype(dtype, tolerance):
    model = net().to(dtype)
    x = torch.randn(2, 3, 12, 12).to(dtype)
    compiled = torch.compile(model, backend="escoin", options={"dense": "eager"})
    with torch.no_grad():
        out = compiled(x)
        ref = net().double()(x.double())  # the same weights, before the cast
    assert out.dtype == dtype
    # the Linear is dense
    assert [l.kernel for l in backend.REPORTS[-1].layers] == ["escoin"] * 3 + ["dense"]
    assert all(l.dtype == str(dtype).replace("torch.", "") for l in backend.REPORTS[-1].layers)
    assert float((out.double() - ref).abs().max() / ref.abs().max()) < tolerance


def test_sparse_linear_layers_too():
    model = prune.magnitude(net(), 0.9, layers="linear")
    compiled = torch.compile(model, backend="escoin", options={"dense": "eager"})
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        close(compiled(x), model(x))
    linear = [l for l in backend.REPORTS[-1].layers if l.op == "linear"]
    assert len(linear) == 1 and linear[0].kernel == "escoin" and linear[0].epilogue == "bias"
    assert "1 of 1 linear layers on Escoin kernels" in last_report()


def test_a_graphs_few_kernels_compile_as_one_module(monkeypatch):
    from escoin_tvm.kernels import build_together

    modules = []
    real = build_together.compile_module
    monkeypatch.setattr(build_together, "compile_module",
                        lambda mod, target: modules.append(len(mod.get_global_vars())) or
                        real(mod, target))
    model = net()
    compiled = torch.compile(model, backend="escoin", options={"dense": "eager"})
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        close(compiled(x), model(x))
    on_escoin = [layer for layer in backend.REPORTS[-1].layers if layer.kernel == "escoin"]
    assert len(on_escoin) >= 3 and modules == [len(on_escoin)]


@pytest.mark.parametrize("options, words", [({"threshold": 2}, "threshold"),
                                            ({"dense": "tvm"}, "dense"),
                                            ({"dispatch": "fastest"}, "dispatch"),
                                            ({"progress": "yes"}, "progress"),
                                            ({"whole_graph": "on"}, "whole_graph"),
                                            ({"mode": "fast"}, "options\\['mode'\\]"),
                                            ({"dense": "eager", "max_autotune": True},
                                             "inductor's")])
def test_bad_options_are_named(options, words):
    compiled = torch.compile(net(), backend="escoin", options=options)
    with torch.no_grad(), pytest.raises(Exception, match=words) as caught:
        compiled(torch.randn(1, 3, 8, 8))
    inner = getattr(caught.value, "inner_exception", caught.value)  # Dynamo wraps it
    assert isinstance(inner, ArgumentError)


def test_the_mode_goes_with_the_options(monkeypatch):
    """torch.compile refuses a mode and options together; options["mode"] sets the mode the
    rest of the graph is compiled in."""
    from torch._inductor import compile_fx

    seen = []
    original = compile_fx.compile_fx

    def recording(gm, example_inputs, config_patches=None, **kwargs):
        seen.append(dict(config_patches or {}))
        return original(gm, example_inputs, **kwargs)  # without max-autotune's slow search

    monkeypatch.setattr(compile_fx, "compile_fx", recording)
    model, x = net(), torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="escoin",
                             options={"mode": "max-autotune-no-cudagraphs", "threshold": 0.7})
    with torch.no_grad():
        close(compiled(x), model(x))
    assert seen and seen[0].get("max_autotune") is True
    assert "3 of 3 convolutions on Escoin kernels" in last_report()


@pytest.mark.parametrize("progress", [True, False])
def test_progress_is_shown_when_asked(capsys, progress):
    compiled = torch.compile(net(), backend="escoin", options={"dense": "eager",
                                                               "progress": progress})
    with torch.no_grad():
        compiled(torch.randn(1, 3, 8, 8))
    assert ("escoin compile" in capsys.readouterr().err) == progress


def test_the_progress_bar_counts_the_kernels_as_their_parts_compile(monkeypatch, capsys):
    """The backend's bar gets the graph's kernels added to its total and ticks as each part
    of them compiles."""
    from escoin_tvm.kernels import build_together
    from escoin_tvm.support import progress

    monkeypatch.setattr(build_together, "PART_KERNELS", 1)
    seen = []
    real = progress.CompileProgress.kernels

    def recording(self, count, total):
        real(self, count, total)
        seen.append((count, total, self.bar.n, self.bar.total))

    monkeypatch.setattr(progress.CompileProgress, "kernels", recording)
    model = net()
    compiled = torch.compile(model, backend="escoin", options={"dense": "eager", "progress": True})
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        close(compiled(x), model(x))
    kernels = sum(layer.kernel == "escoin" for layer in backend.REPORTS[-1].layers)
    assert kernels >= 3 and seen
    assert [count for count, *_ in seen] == [1] * kernels
    assert {total for _, total, *_ in seen} == {kernels}
    # done: the first stage, then the kernels; the total: 3 stages and the kernels (the
    # layers join it at the next stage)
    assert seen[-1][2:] == (1 + kernels, 3 + kernels)


def test_the_one_kernel_call_takes_torch_tensors_and_an_output():
    weight = prune.prune_array(np.random.default_rng(0).standard_normal((8, 4, 3, 3),
                                                                        np.float32), 0.9)
    kernel = escoin_tvm.build_sparse_conv2d(weight, (2, 4, 9, 9), padding=1)
    x = torch.randn(2, 4, 9, 9)
    out = torch.empty(2, 8, 9, 9)
    assert kernel.run_torch(x, out) is out
    ref = torch.nn.functional.conv2d(x.double(), torch.from_numpy(weight).double(), padding=1)
    close(out, ref.float())
    close(kernel(x[:, :, :, :]), ref.float())
    strided = torch.zeros(2, 4, 9, 18)[..., ::2]
    strided.copy_(x)
    close(kernel(strided), ref.float())


@pytest.mark.parametrize("names", [("cpu", torch.device("cpu")),
                                   pytest.param(("cuda", "cuda:0"), marks=pytest.mark.gpu)])
def test_a_layer_builds_one_kernel_per_device_however_it_is_named(names):
    from escoin_tvm.support.target import resolve_target
    from escoin_tvm.torch_compile import ops

    weight = prune.prune_array(np.random.default_rng(1).standard_normal((8, 4, 3, 3),
                                                                        np.float32), 0.9)
    target = resolve_target("cuda" if "cuda" in str(names[0]) else "llvm")
    layer = ops.SparseLayer("conv", weight, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, False, target)
    first, second = (layer.kernel((2, 4, 9, 9), name) for name in names)
    assert first is second and len(layer.kernels) == 1
    assert layer.kernel((3, 4, 9, 9), names[0]) is not first  # a new shape: a new kernel


@pytest.mark.gpu
def test_cuda_graphs_and_measured_dispatch_on_the_gpu():
    torch.backends.cudnn.allow_tf32 = False
    model = net().cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    compiled = torch.compile(model, backend="escoin", mode="reduce-overhead")
    with torch.no_grad():
        for _ in range(3):
            close(compiled(x), model(x))
    report = backend.REPORTS[-1]
    assert any(layer.op == "linear" for layer in report.layers)
    # the whole-graph check may find the graph no faster with the layers that won alone; then
    # each of them runs dense and says why
    reverted = "every layer runs on PyTorch" in report.whole_graph
    for layer in report.layers:
        if layer.sparsity < 0.7:  # the dense Linear: no candidate, not measured
            assert layer.kernel == "dense" and layer.reason.startswith("sparsity")
            continue
        assert layer.escoin_us and layer.dense_us
        faster = layer.escoin_us <= layer.dense_us * (1 - backend.MEASURED_MARGIN)
        if faster and reverted:
            assert layer.kernel == "dense"
            assert layer.reason.startswith("the whole graph was not faster with it; alone, "
                                           "measured:")
        else:
            assert layer.reason.startswith("measured:")
            assert layer.kernel == ("escoin" if faster else "dense")


def test_measured_dispatch_on_the_cpu_times_each_layer_as_calls_through_the_operator():
    from escoin_tvm.torch_compile import ops

    model, x = net(), torch.randn(2, 3, 16, 16)
    registered = len(ops.LAYERS)
    compiled = torch.compile(model, backend="escoin",
                             options={"dispatch": "measure", "whole_graph": False})
    with torch.no_grad():
        close(compiled(x), model(x))
    taken = 0
    for layer in backend.REPORTS[-1].layers:
        if layer.sparsity < 0.7:
            continue
        assert layer.reason.startswith("measured as calls:") and layer.escoin_us > 0 \
            and layer.dense_us > 0
        faster = layer.escoin_us <= layer.dense_us * (1 - backend.MEASURED_MARGIN)
        assert layer.kernel == ("escoin" if faster else "dense")
        taken += faster
    # each measured layer was registered to be timed through the operator, then released;
    # a layer kept is registered again for the graph
    timed = [layer for layer in ops.LAYERS[registered:] if layer is not None]
    assert len(timed) == taken


def test_layers_taken_untimed_off_the_gpu_say_how_to_time_them():
    """On the CPU the default policy takes layers by sparsity alone: the user is told
    that they are untimed and how to have them timed; a policy asked for by name is not
    warned about."""
    import warnings

    model, x = net(), torch.randn(2, 3, 16, 16)
    with torch.no_grad(), pytest.warns(UserWarning, match="untimed.*'dispatch': 'measure'"):
        close(torch.compile(model, backend="escoin")(x), model(x))
    assert any(layer.kernel != "dense" for layer in backend.REPORTS[-1].layers)
    for options in ({"dispatch": "threshold"}, {"dispatch": "measure", "whole_graph": False}):
        model = net(seed=1)
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            close(torch.compile(model, backend="escoin", options=options)(x), model(x))
        assert not [w for w in caught if "untimed" in str(w.message)], options


def test_measured_dispatch_follows_whether_the_graph_replays_cuda_graphs(monkeypatch):
    seen = []

    def fake_time_layers(layers, shape, device, channels_last=False, graphs=True):
        seen.append(graphs)
        return [1e-6] * len(layers), 2e-6  # the Escoin side wins

    monkeypatch.setattr(backend, "_time_layers", fake_time_layers)
    model, x = net(), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for mode in (None, "reduce-overhead"):
            torch._dynamo.reset()
            compiled = torch.compile(model, backend="escoin", options={
                "mode": mode, "dispatch": "measure", "whole_graph": False})
            close(compiled(x), model(x))
    # on the CPU nothing is replayed from CUDA graphs, whatever the mode
    assert seen and not any(seen)
    assert backend._replays_cuda_graphs("inductor", "reduce-overhead", {})
    assert backend._replays_cuda_graphs("inductor", "max-autotune", {})
    assert not backend._replays_cuda_graphs("inductor", None, {})
    assert not backend._replays_cuda_graphs("inductor", "max-autotune-no-cudagraphs", {})
    assert backend._replays_cuda_graphs("inductor", None, {"triton.cudagraphs": True})
    assert backend._replays_cuda_graphs("eager", "reduce-overhead", {})
    assert not backend._replays_cuda_graphs("eager", None, {})


# ---- the whole-graph check ----
def _whole_graph_run(monkeypatch, escoin_ms, dense_ms, options):
    """Compiles net() with the whole-graph timing faked to (escoin_ms, dense_ms); returns the
    output, the model's, and the graphs the fake was handed (each checked against the model)."""
    from escoin_tvm.torch_compile import whole_graph

    handed = []

    def fake_time_graphs(escoin, dense, inputs, timer=None):
        handed.append((escoin(*inputs), dense(*inputs)))
        return whole_graph.GraphTimes(escoin_ms * 1e-3, dense_ms * 1e-3)

    monkeypatch.setattr(whole_graph, "time_graphs", fake_time_graphs)
    model, x = net(), torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="escoin", options={"dense": "eager", **options})
    with torch.no_grad():
        return compiled(x), model(x), handed


@pytest.mark.parametrize("escoin_ms, kept", [(0.9, True), (0.99, False), (1.2, False)])
def test_the_graph_keeps_its_escoin_layers_only_if_it_is_faster_as_a_whole(
        monkeypatch, escoin_ms, kept):
    from escoin_tvm.torch_compile import ops

    registered = len(ops.LAYERS)
    out, expected, handed = _whole_graph_run(monkeypatch, escoin_ms, 1.0,
                                             {"dispatch": "threshold", "whole_graph": True})
    close(out, expected)
    assert len(handed) == 1
    for graph_out in handed[0]:  # both graphs compute the model
        close(graph_out[0] if isinstance(graph_out, (list, tuple)) else graph_out, expected)
    layers = backend.REPORTS[-1].layers
    convolutions = [layer for layer in layers if layer.op == "conv2d"]
    assert [layer.kernel for layer in convolutions] == ["escoin" if kept else "dense"] * 3
    report = last_report()
    assert f"whole graph: escoin {escoin_ms:.3f} ms, dense 1.000 ms" in report
    if kept:
        assert "the Escoin layers run" in report and "3 of 3 convolutions" in report
    else:
        assert "not 2% faster: every layer runs on PyTorch" in report
        assert all(layer.reason.startswith("the whole graph was not faster with it; alone, ")
                   for layer in convolutions)
        # the Escoin layers of the discarded graph are released
        assert all(layer is None for layer in ops.LAYERS[registered:])


def test_the_whole_graph_is_checked_when_its_layers_are_measured_and_not_otherwise(monkeypatch):
    *_, handed = _whole_graph_run(monkeypatch, 0.5, 1.0, {"dispatch": "threshold"})
    assert not handed and backend.REPORTS[-1].whole_graph == ""
    assert "whole graph" not in last_report()
    torch._dynamo.reset()
    *_, handed = _whole_graph_run(monkeypatch, 0.5, 1.0, {"dispatch": "measure",
                                                          "whole_graph": False})
    assert not handed
    torch._dynamo.reset()
    monkeypatch.setattr(backend, "_time_layers",
                        lambda layers, *args, **kwargs: ([1e-6] * len(layers), 2e-6))
    *_, handed = _whole_graph_run(monkeypatch, 0.5, 1.0, {"dispatch": "measure"})
    assert len(handed) == 1
    torch._dynamo.reset()
    # no layer taken: nothing to check
    *_, handed = _whole_graph_run(monkeypatch, 0.5, 1.0, {"dispatch": "measure",
                                                          "threshold": 0.99})
    assert not handed


def test_the_dense_graph_of_the_check_keeps_its_parameters_static(monkeypatch):
    """The dense graph the check compiles is a copy of Dynamo's: AOTAutograd must still see
    where it came from and mark the model's parameters static, as for the Escoin graph, or CUDA
    graphs copy every parameter before each replay and the dense side is timed slow."""
    from torch._functorch._aot_autograd.frontend_utils import _try_get_metadata_from_dynamo

    from escoin_tvm.torch_compile import whole_graph

    static, images, dense_inputs = [], [], []
    inputs = torch.randn(2, 3, 16, 16)

    def dense_backend(gm, example_inputs, *args):
        static.append(_try_get_metadata_from_dynamo(gm, {}, len(example_inputs), [])[1])
        images.append(sum(x.shape == inputs.shape for x in example_inputs))
        dense_inputs.append(len(example_inputs))
        return gm.forward

    monkeypatch.setattr(backend, "_dense_backend", dense_backend)
    monkeypatch.setattr(whole_graph, "time_graphs",
                        lambda *args, **kwargs: whole_graph.GraphTimes(1e-3, 2e-3))
    model = net()
    compiled = torch.compile(model, backend="escoin",
                             options={"dense": "eager", "whole_graph": True})
    with torch.no_grad():
        close(compiled(inputs), model(inputs))
    assert len(static) == 2 and static[0] == static[1]
    # every input is static but the image: the parameters and buffers the graph reads
    assert images == [1, 1] and len(static[1]) == dense_inputs[0] - 1


def test_a_graph_that_cannot_be_timed_keeps_its_measured_layers_and_says_why(monkeypatch):
    from escoin_tvm.torch_compile import whole_graph

    def failing(*args, **kwargs):
        raise RuntimeError("replayed outside a step")

    monkeypatch.setattr(whole_graph, "time_graphs", failing)
    model, x = net(), torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="escoin",
                             options={"dense": "eager", "whole_graph": True})
    with torch.no_grad(), pytest.warns(UserWarning, match="replayed outside a step"):
        close(compiled(x), model(x))
    assert backend.REPORTS[-1].whole_graph == \
        "whole graph not timed (RuntimeError: replayed outside a step)"
    assert [layer.kernel for layer in backend.REPORTS[-1].layers][:3] == ["escoin"] * 3


def test_a_graph_that_writes_its_inputs_is_not_timed_as_a_whole(monkeypatch):
    """Timing a graph calls it many times: one that changes the model's state (a buffer
    counted up in place) is left untimed, its state as the user's calls leave it; an in-place
    ReLU on an intermediate does not count."""
    from escoin_tvm.torch_compile import whole_graph

    monkeypatch.setattr(whole_graph, "time_graphs", lambda *args, **kwargs: pytest.fail(
        "a graph that writes its inputs was timed"))

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = net()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return self.body(x)

    model = Counting().eval()
    compiled = torch.compile(model, backend="escoin",
                             options={"dense": "eager", "whole_graph": True})
    with torch.no_grad():
        close(compiled(torch.ones(2, 3, 12, 12)), model.body(torch.ones(2, 3, 12, 12)))
    assert float(model.calls) == 1
    verdict = backend.REPORTS[-1].whole_graph
    assert verdict.startswith("whole graph not timed: it writes ") and "calls" in verdict
    assert verdict.endswith(" in place, which timing it would repeat (the model's state)")

    def relu_in_place(x):
        y = x * 2
        torch.nn.functional.relu(y, inplace=True)
        return y

    def write_a_view(x):
        x.view(-1).mul_(2)
        return x

    def add_in_place(x):
        x.add_(1)
        return x

    assert whole_graph.mutated_inputs(torch.fx.symbolic_trace(relu_in_place)) == []
    assert whole_graph.mutated_inputs(torch.fx.symbolic_trace(write_a_view)) == ["x"]
    assert whole_graph.mutated_inputs(torch.fx.symbolic_trace(add_in_place)) == ["x"]


def test_the_whole_graph_is_timed_in_alternating_rounds_of_calls():
    from escoin_tvm.torch_compile import whole_graph

    calls = []

    def escoin(x):
        calls.append("escoin")
        return x + 1

    def dense(x):
        calls.append("dense")
        return x + 1

    seen = []

    def timer(fn, device, count):
        seen.append(count)
        for _ in range(count):
            fn()
        # a busy host slows the Escoin graph's first three rounds (of five): its median round
        # would be the slow one
        slow = 2.5 if calls[-1] == "escoin" and 3 <= len(seen) <= 8 else 1.0
        return {"escoin": 1e-3, "dense": 2e-3}[calls[-1]] * slow

    times = whole_graph.time_graphs(escoin, dense, [torch.ones(2)], timer=timer)
    # each side's fastest round: the busy spell does not count
    assert (times.escoin_s, times.dense_s) == (1e-3, 2e-3) and times.keeps_escoin
    rounds = seen[2:]
    assert len(rounds) == 2 * whole_graph.ROUNDS
    assert set(rounds) == {int(whole_graph.ROUND_S / 2e-3)}  # a round lasts about ROUND_S
    # the rounds alternate, each starting with the graph the last one ended with
    ends = [calls[sum(seen[:i + 1]) - 1] for i in range(2, len(seen))]
    assert ends == [side for round_ in range(whole_graph.ROUNDS)
                    for side in (("escoin", "dense") if round_ % 2 == 0 else ("dense", "escoin"))]
    assert whole_graph.device_type([torch.ones(1), 3]) == "cpu"
    assert whole_graph.callable_inputs([torch.ones(1), 3])[1] == 3
    assert whole_graph.callable_inputs([torch.ones(1), object()]) is None


def test_each_timed_call_is_a_cuda_graph_step_of_its_own_and_the_steps_are_left_as_found():
    """The check runs inside Dynamo's compile of the user's frame, one iteration for inductor's
    CUDA-graph trees: each timed call must mark a step of its own (else every call would record
    a graph on top of the last), and the user's program must find the step counter as it was
    (else the trees would wait for steps the program never marks)."""
    from torch._inductor.cudagraph_trees import MarkStepBox

    from escoin_tvm.torch_compile import whole_graph

    before = MarkStepBox.mark_step_counter
    steps = []

    def graph(x):
        steps.append(MarkStepBox.mark_step_counter)
        return x + 1

    whole_graph.time_graphs(graph, graph, [torch.ones(2)],
                            timer=lambda fn, device, count: [fn() for _ in range(count)] and 1e-3)
    assert len(steps) > 2 and len(set(steps)) == len(steps)
    assert MarkStepBox.mark_step_counter == before


def test_whether_a_graph_is_checked_needs_no_device_for_every_candidate():
    from types import SimpleNamespace

    unknown = SimpleNamespace(device=None)  # a candidate whose input has no example value
    gpu = SimpleNamespace(device=torch.device("cuda"))
    assert not backend._checks_whole_graph(None, None, [unknown], [torch.ones(1)])
    assert backend._checks_whole_graph(None, None, [unknown, gpu], [torch.ones(1)])
    assert backend._checks_whole_graph(None, "measure", [unknown], [torch.ones(1)])
    assert not backend._checks_whole_graph(None, "measure", [unknown], None)


def test_a_dynamic_batch_graph_is_checked_at_the_batch_dynamo_saw(monkeypatch):
    from escoin_tvm.torch_compile import whole_graph

    handed = []

    def fake_time_graphs(escoin, dense, inputs, timer=None):
        handed.append([x if isinstance(x, int) else tuple(x.shape) for x in inputs])
        assert torch.allclose(escoin(*inputs)[0], dense(*inputs)[0], rtol=1e-4, atol=1e-5)
        return whole_graph.GraphTimes(2e-3, 1e-3)  # dense wins

    monkeypatch.setattr(whole_graph, "time_graphs", fake_time_graphs)
    model = net()
    compiled = torch.compile(model, backend="escoin",
                             options={"dense": "eager", "whole_graph": True})
    with torch.no_grad():
        for batch in (2, 3, 5):  # the second compile is Dynamo's dynamic-batch graph
            x = torch.randn(batch, 3, 12, 12)
            close(compiled(x), model(x))
    assert len(handed) == 2 and 3 in handed[1] and (3, 3, 12, 12) in handed[1]
    assert all(layer.kernel == "dense" for layer in backend.REPORTS[-1].layers)


def test_the_whole_graph_check_runs_for_real_on_the_cpu():
    model, x = net(), torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="escoin",
                             options={"dense": "eager", "whole_graph": True})
    with torch.no_grad():
        close(compiled(x), model(x))
        close(compiled(x), model(x))
    verdict = backend.REPORTS[-1].whole_graph
    assert verdict.startswith("whole graph: escoin ") and verdict in last_report()
    kept = "the Escoin layers run" in verdict
    kernels = [layer.kernel for layer in backend.REPORTS[-1].layers if layer.op == "conv2d"]
    assert kernels == (["escoin"] * 3 if kept else ["dense"] * 3)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["reduce-overhead", None])
def test_the_whole_graph_check_runs_on_the_gpu_and_keeps_a_correct_graph(mode):
    """On a GPU the layers are measured, so the graph is timed as a whole against the dense
    one (CUDA-graph trees under reduce-overhead); whichever runs matches eager PyTorch, also on
    the calls after the check."""
    torch.backends.cudnn.allow_tf32 = False
    model = net().cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    skips = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]
    compiled = torch.compile(model, backend="escoin", mode=mode)
    with torch.no_grad():
        for _ in range(4):
            close(compiled(x), model(x))
    # the check's calls replay their graphs: re-recording past the trees' limit would leave
    # the compiled model running without CUDA graphs
    assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == skips
    verdict = backend.REPORTS[-1].whole_graph
    kernels = [layer.kernel for layer in backend.REPORTS[-1].layers]
    if any(kernel != "dense" for kernel in kernels):  # kept: it was checked and won
        assert "the Escoin layers run" in verdict, last_report()
    elif verdict:  # checked and lost, or no layer measured faster (then not checked)
        assert "every layer runs on PyTorch" in verdict, last_report()


@pytest.mark.gpu
def test_without_cuda_graphs_the_gpu_layers_are_measured_as_calls():
    torch.backends.cudnn.allow_tf32 = False
    model = net().cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    compiled = torch.compile(model, backend="escoin")
    with torch.no_grad():
        close(compiled(x), model(x))
    measured = [layer for layer in backend.REPORTS[-1].layers if layer.sparsity >= 0.7]
    assert measured and all(layer.reason.startswith("measured as calls:") for layer in measured)


def _graph_layout(model, x):
    from escoin_tvm.torch_compile import graph

    found = {}

    def capture(gm, example_inputs):
        found["layout"] = graph.inductor_uses_channels_last(graph.candidates(gm, example_inputs))
        return gm.forward

    with torch.no_grad():
        torch.compile(model, backend=capture)(x)
    return found["layout"]


def test_measured_dispatch_asks_inductor_which_layout_its_convolutions_get():
    # inductor runs a CNN's convolutions channels-last on a GPU, NCHW model or not; a grouped
    # convolution (more than one channel per group) makes it keep NCHW
    x = torch.randn(1, 3, 16, 16)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 128, 3), torch.nn.ReLU(),
                              torch.nn.Conv2d(128, 128, 3)).eval()
    assert _graph_layout(cnn, x)
    torch._dynamo.reset()
    grouped = torch.nn.Sequential(torch.nn.Conv2d(3, 128, 3),
                                  torch.nn.Conv2d(128, 128, 3, groups=4)).eval()
    assert not _graph_layout(grouped, x)
    torch._dynamo.reset()
    # (config.patch, not monkeypatch: undoing a setattr deletes an inductor config key)
    with torch._inductor.config.patch(layout_optimization=False):
        assert not _graph_layout(cnn, x)
