"""The tensor-core family's tuning space: every point of it schedules, builds for sm_90 and
decodes back to its knobs; a tuning job searches it (with stand-in times on the CPU, with
real ones on the GPU); the log's best record is what both dispatch paths then build."""
import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
import tvm_ffi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import s_tir

import escoin_tvm
from escoin_tvm import prune
from escoin_tvm.errors import ArgumentError
from escoin_tvm.kernels.conv_spec import Conv2dSpec
from escoin_tvm.kernels.epilogue import Epilogue
from escoin_tvm.kernels.template import MutateKnob
from escoin_tvm.kernels.vector_sparse import kernel as vs_kernel
from escoin_tvm.kernels.vector_sparse import lowering
from escoin_tvm.kernels.vector_sparse.operator import padded_pixels
from escoin_tvm.kernels.vector_sparse.schedule_gpu import PAD_ROW, TensorCoreConfig
from escoin_tvm.kernels.vector_sparse.tuning_space import (VectorSparseTask, candidates,
                                                           decode_config, work_config)
from escoin_tvm.kernels.vector_sparse.weight_format import VectorSparseWeight
from escoin_tvm.support.target import resolve_target
from escoin_tvm.tuning import TuningLog, format_summary, job
from escoin_tvm.tuning.context import tune_context
from escoin_tvm.tuning.relax_integration import extract_tasks
from escoin_tvm.tuning.runners import build_kernel

SM_90 = {"kind": "cuda", "arch": "sm_90"}
SHARED_LIMIT = 48 * 1024  # bytes a block may have statically (the target's)


def task_for(shape, weight_shape, *, seed=0, sparsity=0.8, epilogue=Epilogue(bias=True),
             **args):
    """The tuning task of a vector-pruned float16 convolution on sm_90."""
    spec = Conv2dSpec.create(shape, weight_shape, **args)
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(weight_shape).astype(np.float16)
    blocks = rng.random((weight_shape[0] // 16 + 1, *weight_shape[1:])) < sparsity
    weight[np.repeat(blocks, 16, axis=0)[:weight_shape[0]]] = 0
    encoded = VectorSparseWeight.from_dense(weight, spec, 16, 16)
    encoded = encoded.padded_to(work_config(spec, encoded.offsets.shape[1]).k_tile)
    return VectorSparseTask(spec, epilogue, encoded, resolve_target(SM_90), ["layer"])


def points(task):
    """Every config of the task's space."""
    options = candidates(task.spec, task.width)
    return [TensorCoreConfig(*values) for values in itertools.product(*options.values())]


def shared_bytes(config):
    """The GEMM kernel's shared memory: per stage, the gathered input [taps, rows] and the
    values [taps, 16], each row padded by PAD_ROW halves."""
    per_stage = config.k_tile * (config.m_tile + PAD_ROW) + config.k_tile * (16 + PAD_ROW)
    return 2 * per_stage * config.stages


@st.composite
def layers(draw):
    groups = draw(st.sampled_from([1, 1, 2]))
    kernel = draw(st.sampled_from([1, 3, 5]))
    size = draw(st.integers(kernel, 40))
    return dict(shape=(draw(st.sampled_from([1, 2, 3, 8, 12, 16])), 8 * groups, size, size),
                weight_shape=(16 * draw(st.integers(1, 3)) * groups, 8, kernel, kernel),
                padding=draw(st.integers(0, kernel // 2)),
                stride=draw(st.sampled_from([1, 2])), groups=groups,
                sparsity=draw(st.sampled_from([0.0, 0.5, 0.9])), seed=draw(st.integers(0, 99)))


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(layers())
def test_every_point_of_the_space_divides_the_untuned_work(layer):
    """The untuned config is a point of the space, and every combination of candidates
    tiles the workload's rows and taps exactly (a tensorized tile cannot take a predicate),
    keeps the workload's image block and stays within the thread limit."""
    task = task_for(**layer)
    untuned = task.untuned_config()
    assert task.representable(untuned)
    rows = padded_pixels(task.spec, untuned.m_tile, untuned.image_block) * untuned.image_block
    for config in points(task):
        config.validate()
        assert rows % config.m_tile == 0 and task.width % config.k_tile == 0
        assert config.image_block == untuned.image_block
    assert not task.representable(TensorCoreConfig(3, 1, 1, untuned.image_block, 1))


COPY = "ptx_cp_async_legacy"  # the helper of an asynchronous copy into shared memory


@pytest.mark.parametrize("shape,weight_shape,args", [
    ((1, 16, 16, 16), (32, 16, 3, 3), dict(padding=1)),
    ((16, 16, 14, 14), (32, 16, 3, 3), dict(padding=1)),
    ((12, 8, 9, 9), (16, 8, 3, 3), dict(padding=1, stride=2)),
])
def test_every_point_schedules_and_builds_unless_it_needs_too_much_shared_memory(
        shape, weight_shape, args):
    """Each point of the space, as a job's starting point would apply it, decodes back to its
    knobs, passes MetaSchedule's GPU checks and compiles to ldmatrix and mma.sync, unless it
    needs more shared memory than a block may have (refused by the checks); with two stages
    its copies are cp.async, or plain loads where TVM 0.27 cannot make them so (some tiles
    with blocked images: docs/findings.md)."""
    task = task_for(shape, weight_shape, **args)
    context = tune_context(task.workload, task.target, space_generator=task.space_generator())
    built, plain = [], []
    for config in points(task):
        [sch] = task.design_spaces(fixed=config)(s_tir.Schedule(task.workload))
        assert task.decode(sch.trace) == config
        if not all(p.apply(sch) for p in context.space_generator.postprocs):
            assert shared_bytes(config) > SHARED_LIMIT, config
            continue
        source = build_kernel(sch.mod, task.target, None).imports[0].inspect_source()
        assert "mma.sync.aligned.m16n8k16" in source and "ldmatrix.sync" in source, config
        assert (COPY in source) == (config.stages > 1) or config.image_block > 1, config
        if config.stages > 1 and COPY not in source:
            plain.append(config)
        built.append(config)
    assert task.untuned_config() in built and len(built) >= len(points(task)) // 2
    assert all(config.image_block > 1 for config in plain)


def test_a_kernel_tvm_cannot_give_cp_async_keeps_plain_loads_and_the_others_keep_it():
    """A module with a kernel whose copies TVM 0.27 cannot make asynchronous (blocked images,
    one 16-row tile, two stages) and one it can: the first is lowered alone with plain loads,
    the second keeps cp.async."""
    import tvm

    from escoin_tvm.support import tir_pipeline

    task = task_for((8, 64, 28, 28), (64, 64, 3, 3), padding=1)
    funcs = {}
    for name, config in (("blocked_one_tile", TensorCoreConfig(1, 1, 1, 8, 2)),
                         ("blocked_default_tile", TensorCoreConfig(4, 2, 2, 8, 2))):
        [sch] = task.design_spaces(fixed=config)(s_tir.Schedule(task.workload))
        funcs[name] = sch.mod["main"].with_attr("global_symbol", name)
    with task.target:
        lib = tvm.tirx.build(tvm.IRModule(funcs), target=task.target,
                             pipeline=tir_pipeline.NAME)
    source = lib.imports[0].inspect_source()
    kernels = {}
    for part in source.split('extern "C" __global__')[1:]:
        name = part[:part.index("(", part.index(") ") + 2)].rsplit(" ", 1)[-1]
        kernels[name] = kernels.get(name, "") + part
    gemm = {name: text for name, text in kernels.items() if "mma.sync" in text}
    assert sorted(gemm) == ["blocked_default_tile_kernel_1", "blocked_one_tile_kernel_1"]
    assert COPY in gemm["blocked_default_tile_kernel_1"]
    assert COPY not in gemm["blocked_one_tile_kernel_1"]


def test_a_mutated_trace_replays_into_the_config_it_decodes_to():
    """Evolutionary search replays a trace with other decisions (no Python runs then): each
    replayed trace is a schedule of the knobs it decodes to, the same as applying them."""
    task = task_for((2, 16, 16, 16), (64, 8, 3, 3), padding=1, groups=2)
    mutate = MutateKnob(seed=3)
    seen = set()
    for space in task.design_spaces()(s_tir.Schedule(task.workload)):
        trace = space.trace
        for _ in range(8):
            trace = mutate.apply(trace)
            replayed = s_tir.Schedule(task.workload)
            trace.apply_to_schedule(replayed, remove_postproc=False)
            config = decode_config(trace)
            [direct] = task.design_spaces(fixed=config)(s_tir.Schedule(task.workload))
            assert tvm_ffi.structural_equal(replayed.mod, direct.mod), config
            seen.add(config)
    assert len(seen) > 4


def test_the_untuned_point_built_as_tuned_is_the_untuned_kernel():
    """A tuned kernel runs on its workload's work: with the untuned knobs that is exactly the
    untuned kernel, so a record of them changes nothing."""
    task = task_for((16, 16, 14, 14), (32, 16, 3, 3), padding=1)
    weight = VectorSparseWeight.from_dense(task.weight.to_dense(), task.spec, 16, 16)
    config = task.untuned_config()
    tuned, padded = vs_kernel.scheduled_module(task.spec, weight, task.epilogue, config, True)
    untuned, _ = vs_kernel.scheduled_module(task.spec, weight, task.epilogue, config, False)
    assert tvm_ffi.structural_equal(tuned, untuned)
    assert padded.offsets.shape == task.weight.offsets.shape


def test_a_config_that_does_not_fit_the_tuned_work_is_named():
    task = task_for((16, 16, 14, 14), (32, 16, 3, 3), padding=1)
    weight = VectorSparseWeight.from_dense(task.weight.to_dense(), task.spec, 16, 16)
    with pytest.raises(ArgumentError, match="does not fit the tuned work"):
        vs_kernel.scheduled_module(task.spec, weight, task.epilogue,
                                   TensorCoreConfig(1, 1, 1, 1, 1), True)


def test_the_cpu_schedule_has_no_task():
    kernel = lowering.VectorSparseKernel("layer", task_for((1, 8, 8, 8), (16, 8, 3, 3)).spec,
                                         None, Epilogue())
    assert kernel.task(resolve_target("llvm")) is None


def vector_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 32, 3, padding=1))
    return prune.vectors(model, 0.75, group=16).eval().half(), torch.randn(1, 16, 16, 16).half()


class StandInRunner:
    """A runner that measures nothing: each trial gets a time drawn at random, so that a job's
    search, builds and records run without a GPU."""

    def __new__(cls, seed: int = 0):
        import random

        from tvm.ir.utils import derived_object
        from tvm.s_tir import meta_schedule as ms

        @derived_object
        class _Runner(ms.runner.PyRunner):
            def __init__(self):
                super().__init__()
                self.rng = random.Random(seed)

            def run(self, inputs):
                def future(seconds):
                    return ms.runner.RunnerFuture(
                        lambda: True, lambda: ms.runner.RunnerResult([seconds], None))
                return [future(self.rng.uniform(1e-5, 2e-5)) for _ in inputs]

        return _Runner()


@pytest.fixture(scope="module")
def vector_log(tmp_path_factory):
    """A log of 4 trials of the first layer's task, written by a job with stand-in times."""
    model, x = vector_model()
    target = resolve_target(SM_90)
    tasks = extract_tasks(model, (x,), target, 0.5)
    path = tmp_path_factory.mktemp("tuning") / "vector-sm90"
    patch = pytest.MonkeyPatch()
    patch.setattr(job, "make_runner", lambda *args, **kwargs: StandInRunner())
    patch.setattr(job, "has_gpu", lambda: True)
    try:
        results = job.tune_tasks(tasks[:1], log=path, target=target, trials=4,
                                 trials_per_iter=3, out=None)
    finally:
        patch.undo()
    return path, tasks, results


def test_the_models_tensor_core_kernels_are_tasks_a_job_tunes(vector_log):
    path, tasks, results = vector_log
    assert [(type(t).__name__, t.layers) for t in tasks] == [("VectorSparseTask", ["0"]),
                                                             ("VectorSparseTask", ["2"])]
    assert tasks[0].epilogue == Epilogue(bias=True, relu=True)
    assert [r.trials for r in results] == [4] and "stages=" in format_summary(results)
    target = resolve_target(SM_90)
    records = TuningLog(path).records(tasks[0].workload, target)
    assert len(records) == 4
    # the job's first trial is the untuned config
    assert tasks[0].untuned_config() in [tasks[0].decode(r.trace) for r in records]


def test_both_paths_build_the_best_record_of_the_log(vector_log, monkeypatch):
    path, tasks, _ = vector_log
    model, x = vector_model()
    target = resolve_target(SM_90)
    best = tasks[0].decode(TuningLog(path).records(tasks[0].workload, target)[0].trace)
    compiled = escoin_tvm.compile(model, (x,), target=SM_90, tuning_log=path,
                                  sparsity_threshold=0.5)
    first, second = compiled.layers
    assert first["kernel"] == "vector-sparse" and first["schedule"].startswith("tuned")
    assert first["config"] == dict(vars(best))
    assert second["schedule"] == "default"  # the log has no record of its workload

    built = []
    monkeypatch.setattr(vs_kernel, "VectorSparseConv2dKernel",
                        lambda *args: built.append(args))
    from escoin_tvm.kernels import vector_sparse
    from escoin_tvm.torch_compile import ops

    conv = model[0]
    layer = ops.SparseLayer("0", conv.weight.detach().numpy(),
                            conv.bias.detach().float().numpy(), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                            True, target, TuningLog(path), vector_sparse.FAMILY)
    lowering.torch_kernel(layer, tuple(x.shape), None)
    (spec, encoded, bias, epilogue, _, _, config, tuned), = built
    assert config == best and tuned is True
    assert (spec.batch, spec.in_channels, spec.height, spec.width) == tuple(x.shape)
    assert epilogue == Epilogue(bias=True, relu=True)
    assert encoded.weight_shape == tuple(conv.weight.shape)
    np.testing.assert_array_equal(bias, conv.bias.detach().float().numpy())


def test_a_log_with_tensor_core_records_reads_in_a_fresh_process(vector_log):
    """Reading a log replays its traces, which name the family's tensor intrinsics: they are
    registered before any log is read, not only once a schedule has used them."""
    path, _, _ = vector_log
    code = ("from escoin_tvm.tuning import TuningLog; import sys; "
            f"print(len(TuningLog({str(path)!r}).database.get_all_tuning_records()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "4"


@pytest.mark.gpu
def test_a_cuda_job_tunes_the_tensor_core_kernels_and_compile_matches_float64(tmp_path):
    """A real job on the GPU: records with measured times, and the compiled model with them
    matches PyTorch in float64 within half precision."""
    model, x = vector_model()
    results = escoin_tvm.tune(model, (x,), log=tmp_path / "vector-cuda", target="cuda",
                              trials=6, trials_per_iter=3, sparsity_threshold=0.5, out=None)
    assert [r.trials for r in results] == [6, 6]
    assert all(r.best_seconds and r.best_seconds < 1e-3 for r in results)
    compiled = escoin_tvm.compile(model, (x,), target="cuda", tuning_log=tmp_path / "vector-cuda",
                                  sparsity_threshold=0.5)
    assert [l["schedule"].startswith("tuned") for l in compiled.layers] == [True, True]
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    out = compiled(x.cuda()).cpu().float().numpy()
    np.testing.assert_allclose(out, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max())
