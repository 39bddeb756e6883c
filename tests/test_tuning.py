"""Tuning jobs on the CPU (LLVM target, a few trials): logs, resuming, applying, RPC, bad logs.
The GPU template's design space is checked by replaying mutated traces into CUDA code."""
import json
import shutil

import numpy as np
import pytest
import torch

import escoin_tvm
from escoin_tvm import EscoinError, prune
from escoin_tvm.kernels.conv2d.operator import Epilogue
from escoin_tvm.kernels.conv_spec import Conv2dSpec
from escoin_tvm.support.target import resolve_target
from escoin_tvm.tuning import TuningLog, format_summary
from escoin_tvm.tuning.relax_integration import extract_tasks, tune
from escoin_tvm.tuning.log import RECORDS, WORKLOADS
from escoin_tvm.kernels.conv2d.knobs import untuned_config
from escoin_tvm.kernels.template import MutateKnob
from escoin_tvm.kernels.conv2d.tuning_space import (decode_config,
                                                    design_spaces,
                                                    representable,
                                                    workload)


def small_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 12, 3, padding=1, stride=2))
    return prune.magnitude(model, 0.9, min_params=0).eval(), torch.randn(2, 8, 11, 11)


@pytest.fixture(scope="module")
def tuned_log(tmp_path_factory):
    """A log with 3 trials per task, written by a first job."""
    model, x = small_model()
    log = tmp_path_factory.mktemp("tuning") / "small-llvm"
    results = tune(model, (x,), log=log, target="llvm", trials=3, trials_per_iter=3, out=None)
    return log, results


def test_tasks_are_the_models_escoin_kernels():
    model, x = small_model()
    tasks = extract_tasks(model, (x,), "llvm")
    assert [t.layers for t in tasks] == [["0"], ["2"]]
    assert tasks[0].epilogue == Epilogue(bias=True, relu=True)
    assert tasks[1].spec.stride == (2, 2)
    # the workload's row length is that of the ELL arrays the runner measures it with
    assert tasks[1].row_length == tasks[1].arguments().fixed[1].shape[1]


def test_job_writes_a_log_and_resumes_it(tuned_log):
    log, results = tuned_log
    assert [r.trials for r in results] == [3, 3] and [r.new_trials for r in results] == [3, 3]
    assert all(r.best_seconds and r.best_seconds < 1 for r in results)
    assert "vector=" in format_summary(results)
    model, x = small_model()
    again = tune(model, (x,), log=log, target="llvm", trials=3, out=None)
    assert [r.new_trials for r in again] == [0, 0]  # complete: nothing re-measured
    more = tune(model, (x,), log=log, target="llvm", trials=5, trials_per_iter=2, out=None)
    assert [r.trials for r in more] == [5, 5] and [r.new_trials for r in more] == [2, 2]


def test_a_job_starts_from_the_untuned_knobs(tuned_log):
    """Each task's first trial is the config an untuned compile uses, so the search starts from
    it and the best record is at least as fast."""
    log, _ = tuned_log
    model, x = small_model()
    target, tuning_log = resolve_target("llvm"), TuningLog(log)
    for task in extract_tasks(model, (x,), target):
        records = tuning_log.records(task.workload, target)
        assert untuned_config(task.spec, target) in [decode_config(r.trace, target) for r in records]


def mlp_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 40),
                                torch.nn.ReLU(), torch.nn.Linear(40, 24))
    return prune.magnitude(model, 0.9, layers="all").eval(), torch.randn(2, 4, 6, 6)


def test_linear_layers_are_tasks_and_compile_with_their_records(tmp_path):
    """A pruned Linear is a tuning task like a convolution; the job measures the untuned knobs
    first, and a compile with the log runs the best record's knobs, matching PyTorch."""
    model, x = mlp_model()
    tasks = extract_tasks(model, (x,), "llvm")
    assert [(type(t).__name__, t.layers) for t in tasks] == [("LinearTask", ["1"]),
                                                             ("LinearTask", ["3"])]
    assert tasks[0].bias and tasks[0].relu and not tasks[1].relu
    results = tune(model, (x,), log=tmp_path / "mlp", target="llvm", trials=2,
                   trials_per_iter=2, out=None)
    assert [r.trials for r in results] == [2, 2] and "features=" in format_summary(results)
    log = TuningLog(tmp_path / "mlp")
    target = resolve_target("llvm")
    records = log.records(tasks[0].workload, target)
    assert tasks[0].untuned_config() in [tasks[0].decode(r.trace) for r in records]
    compiled = escoin_tvm.compile(model, (x,), target="llvm", tuning_log=tmp_path / "mlp")
    assert [l["schedule"].startswith("tuned") for l in compiled.linear_layers] == [True, True]
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x.numpy()), model(x).numpy(), rtol=1e-5, atol=1e-6)
    # the torch.compile backend's kernels take the same records
    from escoin_tvm.torch_compile import ops

    fc = model[1]
    layer = ops.SparseLinearLayer("1", fc.weight.detach().numpy(), fc.bias.detach().numpy(),
                                  True, target, log)
    kernel = layer.kernel((2, fc.in_features), torch.device("cpu"))
    assert kernel.config == tasks[0].decode(records[0].trace)
    x2 = torch.randn(2, fc.in_features)
    np.testing.assert_allclose(kernel(x2).numpy(), torch.relu(fc(x2)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 16])
def test_linear_gpu_space_decodes_and_builds(batch):
    """The CUDA template of a sparse linear layer: the untuned knobs are a point of the space,
    their trace decodes back to them, and a mutated trace still builds CUDA code."""
    import tvm
    from tvm import s_tir

    from escoin_tvm.kernels.linear.weight_format import SparseLinearWeight
    from escoin_tvm.kernels.linear.tuning_space import LinearTask

    weight = torch.from_numpy(np.random.default_rng(0).standard_normal((50, 300))
                              .astype(np.float32))
    weight[torch.rand(50, 300, generator=torch.Generator().manual_seed(1)) < 0.9] = 0
    task = LinearTask(batch, SparseLinearWeight.from_dense(weight.numpy()), True, True,
                      resolve_target("cuda"), ["fc"])
    config = task.untuned_config()
    assert task.representable(config)
    [space] = task.design_spaces(fixed=config)(s_tir.Schedule(task.workload))
    assert task.decode(space.trace) == config
    trace, mutate = space.trace, MutateKnob(seed=3)
    for _ in range(4):
        trace = mutate.apply(trace)
        sch = s_tir.Schedule(task.workload)
        trace.apply_to_schedule(sch, remove_postproc=False)
        task.decode(trace).validate()
        source = tvm.compile(sch.mod, target=task.target).mod.imports[0].inspect_source()
        assert "__global__" in source


@pytest.mark.parametrize("target", ["llvm", "cuda"])
def test_fixed_design_space_is_the_given_config(target):
    from tvm import s_tir

    target = resolve_target(target)
    spec = Conv2dSpec.create((16, 64, 13, 13), (64, 64, 3, 3), padding=1)
    config = untuned_config(spec, target)
    assert representable(spec, target, config)
    mod = workload(spec, 32, Epilogue(), target)
    [space] = design_spaces(spec, target, fixed=config)(s_tir.Schedule(mod))
    assert decode_config(space.trace, target) == config
    if target.kind.name == "cuda":
        assert not representable(spec, target, type(config)(**{**vars(config), "channel_steps": 16}))


def test_blocked_images_are_spaces_of_their_own():
    """The CUDA space holds, beside the plain structures, one blocked-images space per
    images-per-thread value above 1 (the copy's layout needs it as a constant); a blocked
    config is a point of it, decodes back from its trace and compiles to vector loads."""
    import dataclasses

    import tvm
    from tvm import s_tir

    target = resolve_target("cuda")
    spec = Conv2dSpec.create((16, 64, 13, 13), (64, 64, 3, 3), padding=1)
    mod = workload(spec, 32, Epilogue(), target)
    assert len(design_spaces(spec, target)(s_tir.Schedule(mod))) == 3 + 2  # images 2 and 4
    untuned = untuned_config(spec, target)
    for images in (2, 4):
        config = dataclasses.replace(untuned, images_per_thread=images, block_images=True)
        assert representable(spec, target, config)
        [space] = design_spaces(spec, target, fixed=config)(s_tir.Schedule(mod))
        assert decode_config(space.trace, target) == config
        source = tvm.compile(space.mod, target=target).mod.imports[0].inspect_source()
        assert f"*(float{images}*)(data_pad_ptr + " in source
    assert not representable(spec, target, dataclasses.replace(untuned, images_per_thread=1,
                                                               block_images=True))


@pytest.mark.parametrize("target", ["llvm", "cuda"])
def test_tuning_tasks_and_records_are_keyed_by_dtype(target):
    """The same layer in float32, float16 and bfloat16 are three workloads (records of one
    never apply to another), and the half-precision design spaces replay into code."""
    import tvm
    import tvm_ffi
    from tvm import s_tir

    target = resolve_target(target)
    spec = Conv2dSpec.create((16, 64, 13, 13), (64, 64, 3, 3), padding=1)
    mods = {d: workload(spec, 32, Epilogue(bias=True), target, d)
            for d in ("float32", "float16", "bfloat16")}
    hashes = {d: tvm_ffi.structural_hash(m) for d, m in mods.items()}
    assert len(set(hashes.values())) == 3
    for dtype in ("float16", "bfloat16"):
        config = untuned_config(spec, target, dtype)
        [space] = design_spaces(spec, target, fixed=config, dtype=dtype)(
            s_tir.Schedule(mods[dtype]))
        assert decode_config(space.trace, target) == config
        assert tvm.compile(space.mod, target=target) is not None


@pytest.mark.parametrize("target", ["llvm", "cuda"])
@pytest.mark.parametrize("shape", [(16, 64, 13, 13), (1, 96, 14, 14), (3, 8, 27, 9)])
def test_tuned_kernel_with_the_untuned_knobs_is_the_untuned_kernel(target, shape):
    """A task's workload is the untuned kernel's work (rows and images rounded to its tile, ELL
    rows to its chunk), so the untuned knobs are a point of the search that costs exactly what
    the untuned kernel costs, and every candidate fits that work."""
    import tvm

    from escoin_tvm.kernels.conv2d.kernel import scheduled_module
    from escoin_tvm.kernels.conv2d.knobs import tuned_extents
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig
    from escoin_tvm.kernels.conv2d.tuning_space import _space
    from escoin_tvm.kernels.conv2d.weight_format import EscoinWeight

    target = resolve_target(target)
    spec = Conv2dSpec.create(shape, (32, shape[1], 3, 3), padding=1)
    weight = EscoinWeight.from_dense(prune.prune_array(
        np.random.default_rng(0).standard_normal(spec.weight_shape).astype(np.float32), 0.9), spec)
    config = untuned_config(spec, target)
    (images, rows), multiple = tuned_extents(spec, target)
    untuned = scheduled_module(spec, weight, Epilogue(), target)
    tuned = scheduled_module(spec, weight, Epilogue(), target, config, tuned=True)
    tvm.ir.assert_structural_equal(untuned[0], tuned[0])
    for untuned_array, tuned_array in zip(untuned[1], tuned[1]):
        np.testing.assert_array_equal(untuned_array, tuned_array)
    candidates, _ = _space(spec, target)
    if isinstance(config, GpuConfig):
        assert all(images % v == 0 for v in candidates["images_per_thread"])
        assert all(multiple % v == 0 for v in candidates["chunk"])
    assert all(rows % v == 0 for v in candidates["rows_per_thread" if isinstance(config, GpuConfig)
                                                else "rows"])


def test_compile_uses_the_tuned_schedules(tuned_log):
    log, _ = tuned_log
    model, x = small_model()
    compiled = escoin_tvm.compile(model, (x,), target="llvm", tuning_log=log)
    assert [l["schedule"].startswith("tuned") for l in compiled.layers] == [True, True]
    task = extract_tasks(model, (x,), "llvm")[1]  # the knobs compiled are the log's best
    best = TuningLog(log).best(task.workload, resolve_target("llvm"), task.decode)
    assert compiled.layers[1]["config"] == dict(vars(best[0]))
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)


def copy_log(log, tmp_path):
    copy = tmp_path / "log"
    shutil.copytree(log, copy)
    return copy


def test_the_cost_model_starts_from_the_log(tuned_log, tmp_path):
    """One XGBoost model per job, pre-trained on every record the log holds for the target, so
    that it ranks candidates from the first search round (MetaSchedule's own starts random)."""
    import io
    import re

    from escoin_tvm.tuning.context import tune_context
    from escoin_tvm.tuning.cost_model import job_cost_model, logged_samples

    log = copy_log(tuned_log[0], tmp_path)
    target = resolve_target("llvm")
    records = TuningLog(log).database.get_all_tuning_records()
    cost_model, used, kernels = job_cost_model(TuningLog(log), target)
    assert (used, kernels, cost_model.data_size) == (len(records), 2, len(records))
    cost_model.num_warmup_samples = 0  # past the warm-up: predictions come from the booster
    workload, (candidates, _results) = next(iter(logged_samples(TuningLog(log), target)[0].items()))
    context = tune_context(workload.mod, target)
    assert cost_model.predict(context, candidates) == pytest.approx(cost_model.predict(context, candidates))
    # the job says so, and a log for another target teaches it nothing
    model, x = small_model()
    out = io.StringIO()
    tune(model, (x,), log=log, target="llvm", trials=len(records) // 2 + 1, trials_per_iter=1, out=out)
    assert re.search(rf"pre-trained on the log's {len(records)} records of 2 kernels", out.getvalue())
    assert job_cost_model(TuningLog(log), resolve_target("cuda"))[1:] == (0, 0)


def test_corrupt_log_names_the_file_and_line(tuned_log, tmp_path):
    log = copy_log(tuned_log[0], tmp_path)
    lines = (log / RECORDS).read_text().splitlines()
    lines[1] = lines[1][:1] + "garbage" + lines[1][1:]  # not JSON any more
    (log / RECORDS).write_text("\n".join(lines) + "\n")
    model, x = small_model()
    with pytest.raises(EscoinError, match=rf"{RECORDS}, line 2 is corrupt"):
        escoin_tvm.compile(model, (x,), target="llvm", tuning_log=log)
    (log / WORKLOADS).write_bytes(b"\x00\xff" * 10)
    with pytest.raises(EscoinError, match=f"{WORKLOADS} is not a text file"):
        TuningLog(log)


def test_truncated_log_drops_the_partial_line_with_a_warning(tuned_log, tmp_path):
    log = copy_log(tuned_log[0], tmp_path)
    text = (log / RECORDS).read_text()
    (log / RECORDS).write_text(text[:-30])  # killed in the middle of the last record
    with pytest.warns(UserWarning, match=f"{RECORDS}: dropping the truncated last line"):
        repaired = TuningLog(log)
    assert repaired.size == len(text.splitlines()) - 1
    model, x = small_model()
    compiled = escoin_tvm.compile(model, (x,), target="llvm", tuning_log=log)
    assert all(l["schedule"].startswith("tuned") for l in compiled.layers)


@pytest.mark.parametrize("damage", ["\n", "\n\n", "   \n", "\t\n"])
def test_blank_lines_in_a_log_are_left_out_not_a_crash(tuned_log, tmp_path, damage):
    """MetaSchedule's reader kills the process on a blank or whitespace-only line (a trailing
    newline too many, cat a b > c): a compile reads a cleaned copy and leaves the file alone, a
    job rewrites its log without them."""
    log = copy_log(tuned_log[0], tmp_path)
    lines = (log / RECORDS).read_text().splitlines(True)
    damaged = "".join(lines[:1]) + damage + "".join(lines[1:]) + damage
    (log / RECORDS).write_text(damaged)
    (log / WORKLOADS).write_text((log / WORKLOADS).read_text() + damage)
    model, x = small_model()
    with pytest.warns(UserWarning, match="blank line.*read from a cleaned copy"):
        compiled = escoin_tvm.compile(model, (x,), target="llvm", tuning_log=log)
    assert all(l["schedule"].startswith("tuned") for l in compiled.layers)
    assert (log / RECORDS).read_text() == damaged
    with pytest.warns(UserWarning, match="blank line.*rewritten without"):
        TuningLog(log, create=True)
    assert (log / RECORDS).read_text() == "".join(lines)


def test_a_records_file_that_is_a_folder_is_named(tuned_log, tmp_path):
    log = copy_log(tuned_log[0], tmp_path)
    (log / WORKLOADS).unlink()
    (log / WORKLOADS).mkdir()
    with pytest.raises(EscoinError, match=f"{WORKLOADS} is not a file"):
        TuningLog(log)


OPEN_EACH = """
import sys, warnings
warnings.simplefilter("ignore")
import torch, escoin_tvm
from escoin_tvm import prune
from escoin_tvm.support.target import resolve_target
from escoin_tvm.tuning import TuningLog
from escoin_tvm.tuning.relax_integration import extract_tasks
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 12, 3, padding=1, stride=2))
model = prune.magnitude(model, 0.9).eval()
target = resolve_target("llvm")
tasks = extract_tasks(model, (torch.randn(2, 8, 11, 11),), target)
for path in sys.stdin.read().split():
    print("start", path, flush=True)
    try:
        log = TuningLog(path)
        for task in tasks:
            log.best(task.workload, target, task.decode)
        print("read", path, flush=True)
    except escoin_tvm.EscoinError:
        print("refused", path, flush=True)
    except Exception as err:
        print("other", path, flush=True)
"""


def test_damaged_logs_are_refused_or_read_never_a_crash(tuned_log, tmp_path):
    """Blank lines, truncation, random byte and character edits, duplicated and deleted lines,
    in either file of the log: each damaged log is read (what it still holds) or refused with an
    EscoinError, in a child process that must not die."""
    import random

    from helpers import outcomes_in_children

    rng, paths = random.Random(0), []
    for i in range(40):
        log = tmp_path / f"log{i}"
        shutil.copytree(tuned_log[0], log)
        target = log / rng.choice([WORKLOADS, RECORDS])
        data = bytearray(target.read_bytes())
        lines = data.split(b"\n")
        kind = i % 7
        if kind == 0:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice([b"", b"  ", b"\t "]))
        elif kind == 1:
            lines.insert(rng.randrange(len(lines)), lines[rng.randrange(len(lines))])
        elif kind == 2 and len(lines) > 1:
            del lines[rng.randrange(len(lines))]
        if kind <= 2:
            data = bytearray(b"\n".join(lines))
        elif kind == 3:
            data = data[:rng.randrange(len(data))]
        elif kind == 4:
            for _ in range(rng.randint(1, 16)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data[rng.randrange(len(data))] = ord(rng.choice('0123456789[]{},":abc '))
        target.write_bytes(bytes(data))
        paths.append(str(log))
    results = outcomes_in_children(OPEN_EACH, paths)
    assert set(results.values()) <= {"read", "refused"}, results


def test_log_of_another_target_is_reported(tuned_log, tmp_path):
    log = copy_log(tuned_log[0], tmp_path)
    rows = [json.loads(line) for line in (log / RECORDS).read_text().splitlines()]
    for row in rows:
        row[1][2] = {"kind": "cuda", "arch": "sm_90", "keys": ["cuda", "gpu"], "tag": ""}
    (log / RECORDS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, x = small_model()
    with pytest.warns(UserWarning) as caught:
        compiled = escoin_tvm.compile(model, (x,), target="llvm", tuning_log=log)
    ours = [str(w.message) for w in caught if str(w.message).startswith("tuning log")]
    assert len(ours) == 1 and f"tuning log {log} has no records for target llvm" in ours[0]
    assert [l["schedule"] for l in compiled.layers] == ["default", "default"]


def test_log_of_another_model_is_reported(tuned_log):
    """A log for this target whose records are all for other kernels: one warning, naming it."""
    torch.manual_seed(1)
    other = prune.magnitude(torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3)), 0.9, min_params=0)
    with pytest.warns(UserWarning) as caught:
        compiled = escoin_tvm.compile(other.eval(), (torch.randn(1, 8, 7, 7),), target="llvm",
                                      tuning_log=tuned_log[0])
    ours = [str(w.message) for w in caught if str(w.message).startswith("tuning log")]
    assert ours == [f"tuning log {tuned_log[0]} has no records for this model's kernels on llvm: "
                    "they use the pre-tuned or default schedules"]
    assert compiled.layers[0]["schedule"] == "default"


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no tuning log at"),
    (lambda p: (p.parent.mkdir(exist_ok=True), p.write_text("x"), p)[-1], "is a file"),
    (lambda p: (p.mkdir(parents=True), p)[-1], "is not a tuning log"),
])
def test_missing_or_wrong_log_paths(tmp_path, make, message):
    path = make(tmp_path / "logs" / "x")
    model, x = small_model()
    with pytest.raises(EscoinError, match=message):
        escoin_tvm.compile(model, (x,), target="llvm", tuning_log=path)


def test_rpc_tracker_errors_are_clear(tmp_path):
    model, x = small_model()
    with pytest.raises(EscoinError, match="cannot reach the RPC tracker at 127.0.0.1:9"):
        tune(model, (x,), log=tmp_path / "l", target="llvm", trials=1, rpc_tracker="127.0.0.1:9",
             rpc_key="k", out=None)
    with pytest.raises(EscoinError, match="HOST:PORT"):
        tune(model, (x,), log=tmp_path / "l", target="llvm", trials=1, rpc_tracker="nohost",
             rpc_key="k", out=None)


def test_tuning_through_an_rpc_tracker(tmp_path):
    """Scale-out: the measurements go to a CPU RPC server registered with a local tracker."""
    pytest.importorskip("tornado")
    from tvm.s_tir.meta_schedule.testing.local_rpc import LocalRPC

    model, x = small_model()
    with LocalRPC(tracker_key="escoin-ci", silent=True) as rpc:
        tracker = f"127.0.0.1:{rpc.tracker_port}"
        with pytest.raises(EscoinError, match="no server with key 'other'"):
            tune(model, (x,), log=tmp_path / "l", target="llvm", trials=1, rpc_tracker=tracker,
                 rpc_key="other", out=None)
        results = tune(model, (x[:1],), log=tmp_path / "rpc", target="llvm", trials=2,
                       trials_per_iter=2, rpc_tracker=tracker, rpc_key="escoin-ci", out=None)
        assert [r.trials for r in results] == [2, 2] and all(r.best_seconds for r in results)
        if not escoin_tvm.support.target.has_gpu():  # else the server could run the CUDA kernels
            # trials that all fail on the servers (CUDA kernels, a CPU server) are reported
            # with their error, not just left out of the summary
            with pytest.warns(UserWarning, match="(?s)task 0: none of its trials built and ran on "
                              "the RPC servers of key 'escoin-ci'.*first error.*cuda"):
                failed = tune(model, (x[:1],), log=tmp_path / "cuda", target="cuda", trials=1,
                              rpc_tracker=tracker, rpc_key="escoin-ci", out=None)
            assert [r.best_seconds for r in failed] == [None, None]


@pytest.mark.skipif(escoin_tvm.support.target.has_gpu(), reason="needs a machine without a GPU")
def test_cuda_tuning_without_a_gpu_is_refused(tmp_path):
    model, x = small_model()
    with pytest.raises(EscoinError, match="measures the trials on a GPU and this machine has none"):
        tune(model, (x,), log=tmp_path / "l", target="cuda", trials=1, out=None)


@pytest.mark.parametrize("target", ["llvm", "cuda"])
def test_design_space_replays_under_mutation(target):
    """Every mutated trace replays (the knobs are real sampling decisions) and decodes into the
    config it applies; the CUDA ones generate code."""
    import tvm
    from tvm import s_tir

    target = resolve_target(target)
    spec = Conv2dSpec.create((3, 8, 9, 7), (12, 4, 3, 3), stride=(2, 1), padding=1, groups=2)
    mod = workload(spec, 32, Epilogue(bias=True), target)
    mutate = MutateKnob(seed=1)
    for space in design_spaces(spec, target)(s_tir.Schedule(mod)):
        trace = space.trace
        for _ in range(6):
            trace = mutate.apply(trace)
            replayed = s_tir.Schedule(mod)
            trace.apply_to_schedule(replayed, remove_postproc=False)
            config = decode_config(trace, target).validate()
            if target.kind.name == "cuda" and config.threads <= 1024:
                built = tvm.compile(replayed.mod, target=target)
                assert "__global__" in built.mod.imports[0].inspect_source()


def test_tune_context_is_made_without_parsing_the_tensor_intrinsics():
    """MetaSchedule's TuneContext imports tvm.s_tir.tensor_intrin (about a minute of TVMScript
    parsing); a job stands an empty module in for it while it makes the context, then takes it
    out, so that a later real import is not shadowed."""
    import sys

    from escoin_tvm.tuning.context import without_tensor_intrinsics

    name = "tvm.s_tir.tensor_intrin"
    before = sys.modules.get(name)
    with without_tensor_intrinsics():
        assert name in sys.modules
        if before is None:
            assert not hasattr(sys.modules[name], "cuda")  # the stand-in, not the real module
    assert sys.modules.get(name) is before


def _evaluator_inputs(target):
    import tvm
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig

    rng = np.random.default_rng(0)
    weight = prune.prune_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), 0.8)
    kernel = escoin_tvm.build_sparse_conv2d(weight, (1, 4, 9, 9), padding=1, target=target)
    data = rng.standard_normal((1, 4, 9, 9)).astype(np.float32)
    args = [tvm.runtime.tensor(a, kernel.device) for a in [data, *kernel.host_constants]]
    args.append(tvm.runtime.empty(kernel.spec.output_shape, "float32", kernel.device))
    return kernel, args, EvaluatorConfig(number=4, repeat=3, min_repeat_ms=0,
                                         enable_cpu_cache_flush=False)


def test_trials_on_the_cpu_use_metaschedules_evaluator():
    """The CUDA-graph evaluator falls back to MetaSchedule's own off the GPU: one time per repeat."""
    from escoin_tvm.tuning.evaluator import GraphEvaluator

    kernel, args, config = _evaluator_inputs("llvm")
    costs = GraphEvaluator()(kernel.executable.mod, kernel.device, config, [args, args])
    assert len(costs) == 6 and all(0 < c < 1 for c in costs)


@pytest.mark.gpu
@pytest.mark.gpu_exclusive
def test_trials_on_the_gpu_are_timed_from_a_cuda_graph():
    from escoin_tvm.support.timing import graph_time
    from escoin_tvm.tuning.evaluator import GraphEvaluator

    kernel, args, config = _evaluator_inputs("cuda")
    costs = GraphEvaluator()(kernel.executable.mod, kernel.device, config, [args])
    assert len(costs) == 3 and all(0 < c < 1e-3 for c in costs)
    # the same measurement as the benchmarks': within noise of graph_time on the same kernel
    reference = graph_time(lambda: kernel.executable.mod["main"](*args), tvm_stream=True)
    assert 0.5 * reference < np.median(costs) < 2 * reference


@pytest.mark.gpu
def test_a_cuda_job_tunes_and_compiles(tmp_path):
    model, x = small_model()
    results = tune(model, (x,), log=tmp_path / "small-cuda", target="cuda", trials=3,
                   trials_per_iter=3, out=None)
    assert [r.trials for r in results] == [3, 3]
    assert all(r.best_seconds and r.best_seconds < 1e-3 for r in results)
    compiled = escoin_tvm.compile(model, (x,), target="cuda", tuning_log=tmp_path / "small-cuda")
    assert [l["schedule"].startswith("tuned") for l in compiled.layers] == [True, True]
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x.cuda()).cpu().numpy(), model(x).numpy(),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_sums_kernels_tune_on_their_own_workload(dtype):
    """A half-precision layer whose untuned kernel sums in half precision: its workload has
    the chunk-sum stages (records of the plain kernel never apply to it), its space is the
    untuned point, which decodes back from its trace and compiles to packed FMAs."""
    import tvm
    import tvm_ffi
    from tvm import s_tir

    from escoin_tvm.kernels.conv2d.operator import sparse_conv2d_primfunc
    from escoin_tvm.kernels.conv2d.tuning_space import half_sums_point

    target = resolve_target("cuda")
    spec = Conv2dSpec.create((16, 64, 28, 28), (64, 64, 3, 3), padding=1)
    untuned = untuned_config(spec, target, dtype)
    assert untuned.half_sums and half_sums_point(spec, target, dtype) == untuned
    mod = workload(spec, 64, Epilogue(bias=True), target, dtype)
    assert "partial_sum" in mod.script()
    plain = sparse_conv2d_primfunc(spec, 64, Epilogue(bias=True), (16, 28), dtype)
    assert tvm_ffi.structural_hash(mod) != tvm_ffi.structural_hash(
        tvm.IRModule({"main": plain.with_attr("global_symbol", "main")}))
    assert representable(spec, target, untuned, dtype)
    [space] = design_spaces(spec, target, dtype=dtype)(s_tir.Schedule(mod))
    assert decode_config(space.trace, target) == untuned
    source = tvm.compile(space.mod, target=target).mod.imports[0].inspect_source()
    assert f"escoin_hfma2_{dtype}(" in source
