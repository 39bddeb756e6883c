"""The shipped pre-tuned schedule tables (schedules/): lookup, and the merge that sweeps and
tuning runs use to update them."""
import json

import numpy as np
import pytest

from escoin_tvm.kernels import knob_table
from escoin_tvm.kernels.conv2d import knobs as conv_knobs
from escoin_tvm.kernels.linear import knobs as linear_knobs
from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig
from escoin_tvm.kernels.conv_spec import Conv2dSpec

VGG_CONV3_2 = Conv2dSpec.create((16, 256, 56, 56), (256, 256, 3, 3), padding=1)
HEADER = {"arch": "sm_90", "gpu": "test", "sparsity": 0.9, "source": "test", "date": "now"}


@pytest.fixture
def tables(tmp_path, monkeypatch):
    """lookup() reading tables from tmp_path only."""
    monkeypatch.setattr(knob_table, "SCHEDULES_DIRS", (tmp_path,))
    knob_table.cache_clear()
    yield tmp_path
    knob_table.cache_clear()


def test_shipped_table_has_the_benchmark_layers():
    config = conv_knobs.lookup(VGG_CONV3_2, "sm_90")
    assert isinstance(config, GpuConfig) and config.threads <= 1024
    assert conv_knobs.lookup(VGG_CONV3_2, "sm_90a") == config  # sm_90a reads sm_90's table
    assert conv_knobs.lookup(Conv2dSpec.create((3, 5, 7, 9), (4, 5, 3, 3)), "sm_90") is None
    assert conv_knobs.lookup(VGG_CONV3_2, "sm_80") is None  # no table for that architecture


def test_the_table_is_keyed_by_dtype(tables):
    """A record without a dtype is float32 (the shipped table's); a float16 one is looked up
    for float16 kernels only."""
    f32, f16 = GpuConfig(threads_x=16), GpuConfig(threads_x=32)
    knob_table.write_table(tables / "pretuned-sm_90.json", {conv_knobs.SECTION: [
        conv_knobs.record("a", VGG_CONV3_2, f32, 900.0),
        conv_knobs.record("a", VGG_CONV3_2, f16, 500.0, dtype="float16")]}, **HEADER)
    assert conv_knobs.lookup(VGG_CONV3_2, "sm_90") == f32
    assert conv_knobs.lookup(VGG_CONV3_2, "sm_90", "float16") == f16
    assert conv_knobs.lookup(VGG_CONV3_2, "sm_90", "bfloat16") is None


def test_merge_keeps_the_faster_record_per_shape(tables):
    slow, fast = GpuConfig(threads_x=16), GpuConfig(threads_x=32, channel_threads=8)
    other = Conv2dSpec.create((1, 8, 9, 9), (8, 8, 3, 3), padding=1)
    path = tables / "pretuned-sm_90.json"
    knob_table.write_table(path, {conv_knobs.SECTION: [
        conv_knobs.record("a", VGG_CONV3_2, slow, 900.0),
        conv_knobs.record("b", other, fast, 5.0)]}, **HEADER)
    merged = conv_knobs.merge([conv_knobs.record("a2", VGG_CONV3_2, fast, 800.0),
                               conv_knobs.record("b2", other, slow, 6.0)], path)
    assert sorted(r["layer"] for r in merged) == ["a2", "b"]
    knob_table.write_table(path, {conv_knobs.SECTION: merged}, **HEADER)
    assert conv_knobs.lookup(VGG_CONV3_2, "sm_90") == fast
    assert conv_knobs.lookup(other, "sm_90") == fast
    assert conv_knobs.merge([], tables / "missing.json") == []
    # replace: the new record wins even when slower (its time is from another measurement)
    replaced = conv_knobs.merge([conv_knobs.record("b3", other, slow, 6.0)], path, replace=True)
    assert sorted(r["layer"] for r in replaced) == ["a2", "b3"]


def test_corrupt_table_is_ignored_with_a_warning_naming_it(tables):
    path = tables / "pretuned-sm_90.json"
    path.write_text(json.dumps({conv_knobs.SECTION: [{"input_shape": [1, 2, 3, 4]}]}))
    with pytest.warns(UserWarning, match=str(path)):
        assert conv_knobs.lookup(VGG_CONV3_2, "sm_90") is None


def test_tuning_runs_merge_only_knobs_that_beat_the_shipped_ones(tables, capsys):
    """experiments/tuning/merge_tuned.py: a run's tuned knobs replace the table's config for a
    layer only when more than --min-gain faster in that run; the last run of a layer counts."""
    from experiments.tuning import merge_tuned

    spec = VGG_CONV3_2
    shipped, tuned = GpuConfig(threads_x=16), GpuConfig(threads_x=32, channel_threads=8)
    table = tables / "pretuned-sm_90.json"
    knob_table.write_table(table, {conv_knobs.SECTION: [
        conv_knobs.record("vgg16_conv3_2", spec, shipped, 940.0)]}, **HEADER)

    def run(name, tuned_us, pretuned_us=940.0):
        row = {"layer": "vgg16_conv3_2", "batch": 16, "trials": 36, "tuned_us": tuned_us,
               "pretuned_us": pretuned_us, "configs": {"tuned": dict(vars(tuned))}}
        path = tables / name
        path.write_text(json.dumps({"environment": {}}) + "\n" + json.dumps(row) + "\n")
        return str(path)

    tie, win = run("tie.jsonl", 930.0), run("win.jsonl", 800.0)  # 1.1% faster: a tie
    merge_tuned.main([win, tie, "--table", str(table)])  # the last run (the tie) counts
    assert conv_knobs.lookup(spec, "sm_90") == shipped
    assert "0 of 1 tasks merged" in capsys.readouterr().out
    knob_table.cache_clear()
    merge_tuned.main([tie, win, "--table", str(table)])
    assert conv_knobs.lookup(spec, "sm_90") == tuned
    [merged] = json.loads(table.read_text())[conv_knobs.SECTION]
    assert merged["time_us"] == 800.0 and merged["pretuned_us"] == 940.0
    assert "win.jsonl" in merged["source"]


def test_a_plain_half_tile_takes_the_float32_record_and_a_blocked_one_the_heuristic(tables):
    """Without a record of its own, a half-precision kernel whose heuristic tile is plain
    (batch 1) gets the float32 record of its shape; one whose heuristic blocks images (batch 16:
    half sums) keeps the heuristic; a record of its own dtype comes first."""
    import tvm

    from escoin_tvm.kernels.conv2d.knobs import default_gpu_config, schedule_source, untuned_config

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    b1 = Conv2dSpec.create((1, 256, 56, 56), (256, 256, 3, 3), padding=1)
    f32, f16 = GpuConfig(threads_x=8, chunk=8), GpuConfig(threads_x=32, chunk=32)
    assert not default_gpu_config(b1, "float16").block_images
    assert default_gpu_config(VGG_CONV3_2, "float16").block_images
    knob_table.write_table(tables / "pretuned-sm_90.json", {conv_knobs.SECTION: [
        conv_knobs.record("b1", b1, f32, 60.0),
        conv_knobs.record("b16", VGG_CONV3_2, f32, 900.0)]}, **HEADER)
    for dtype in ("float16", "bfloat16"):
        assert untuned_config(b1, target, dtype) == f32
        assert schedule_source(b1, target, dtype) == "pre-tuned (float32)"
        assert untuned_config(VGG_CONV3_2, target, dtype) == default_gpu_config(VGG_CONV3_2, dtype)
        assert schedule_source(VGG_CONV3_2, target, dtype) == "default"
    assert untuned_config(b1, target, "float32") == f32
    assert schedule_source(b1, target, "float32") == "pre-tuned"
    knob_table.write_table(tables / "pretuned-sm_90.json", {conv_knobs.SECTION: [
        conv_knobs.record("b1", b1, f32, 60.0),
        conv_knobs.record("b1", b1, f16, 50.0, dtype="float16")]}, **HEADER)
    knob_table.cache_clear()
    assert untuned_config(b1, target, "float16") == f16
    assert schedule_source(b1, target, "float16") == "pre-tuned"


def test_shipped_table_has_the_benchmark_fc_layers():
    """VGG-16's fc6 at batch 16 has float32 and float16 records; shapes, batches and dtypes
    the table lacks get None."""
    from escoin_tvm.kernels.linear.schedule_gpu import LinearGpuConfig

    for dtype in ("float32", "float16"):
        config = linear_knobs.lookup(25088, 4096, 16, "sm_90", dtype)
        assert isinstance(config, LinearGpuConfig) and config.lanes * config.rows <= 1024
    assert linear_knobs.lookup(25088, 4096, 16, "sm_90", "bfloat16") is None
    assert linear_knobs.lookup(25088, 4096, 3, "sm_90") is None
    assert linear_knobs.lookup(4096, 25088, 16, "sm_90") is None  # in and out swapped


def test_a_shipped_linear_record_is_the_untuned_choice_and_tuning_keys_stay(tables):
    """A linear record is the knobs of its shape, batch and dtype without a tuning log
    (reported "pre-tuned"), on GPU targets only; other batches and dtypes keep the heuristic;
    a tuning record stays keyed on the heuristic's work; rewriting the table's convolution
    records keeps its linear ones."""
    import tvm

    from escoin_tvm.kernels.linear.weight_format import SparseLinearWeight
    from escoin_tvm.kernels.linear.kernel import build_sparse_linear, linear_schedule_choice
    from escoin_tvm.kernels.linear.knobs import (heuristic_linear_config,
                                                 tuned_row_multiple,
                                                 untuned_linear_config)
    from escoin_tvm.prune import prune_array
    from escoin_tvm.kernels.linear.schedule_cpu import LinearCpuConfig
    from escoin_tvm.kernels.linear.schedule_gpu import LinearGpuConfig
    from escoin_tvm.kernels.linear.tuning_space import linear_workload

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    w = prune_array(np.random.default_rng(0).standard_normal((40, 300), np.float32), 0.9)
    weight = SparseLinearWeight.from_dense(w)
    shipped = LinearGpuConfig(lanes=8, rows=16, batch_tile=16, chunk=2)
    path = tables / "pretuned-sm_90.json"
    knob_table.write_table(path, {linear_knobs.SECTION: [linear_knobs.record(
        "fc", 300, 40, 16, "float32", shipped, 10.0)]}, **HEADER)
    key_before = linear_workload(16, weight, False, True, target)
    assert untuned_linear_config(16, weight, target) == shipped
    assert linear_schedule_choice(16, weight, False, True, target) == (shipped, False,
                                                                       "pre-tuned")
    heuristic = heuristic_linear_config(16, weight, target)
    assert heuristic != shipped
    assert tuned_row_multiple(16, weight, target) == heuristic.row_multiple
    assert untuned_linear_config(8, weight, target) == heuristic_linear_config(8, weight, target)
    half = SparseLinearWeight.from_dense(w.astype(np.float16))
    assert untuned_linear_config(16, half, target) == heuristic_linear_config(16, half, target)
    assert linear_schedule_choice(8, weight, False, True, target)[2] == "default"
    assert untuned_linear_config(16, weight, tvm.target.Target("llvm")) == LinearCpuConfig()
    kernel = build_sparse_linear(w, 16, relu=True, target=target)
    assert kernel.config == shipped and "__global__" in kernel.source
    knob_table.write_table(path, {conv_knobs.SECTION: [
        conv_knobs.record("a", VGG_CONV3_2, GpuConfig(), 900.0)]}, **HEADER)
    knob_table.cache_clear()
    assert linear_knobs.lookup(300, 40, 16, "sm_90") == shipped
    knob_table.cache_clear()
    knob_table.write_table(path, {linear_knobs.SECTION: []}, **HEADER)
    assert untuned_linear_config(16, weight, target) == heuristic
    tvm.ir.assert_structural_equal(linear_workload(16, weight, False, True, target), key_before)


def test_shipping_linear_sweeps_takes_benchmark_layers_that_beat_the_heuristic(tables, capsys):
    """experiments/tuning/ship_linear_tiles.py: a benchmark FC layer's fastest sweep config
    goes into the table's linear records when it beat the heuristic by more than --min-gain;
    ties and held-out shapes stay out; the convolution records are kept."""
    from experiments.tuning import ship_linear_tiles

    from escoin_tvm.kernels.linear.schedule_gpu import LinearGpuConfig

    table = tables / "pretuned-sm_90.json"
    knob_table.write_table(table, {conv_knobs.SECTION: [
        conv_knobs.record("a", VGG_CONV3_2, GpuConfig(), 900.0)]}, **HEADER)
    heuristic, big = LinearGpuConfig(rows=4, batch_tile=8), LinearGpuConfig(rows=32,
                                                                            batch_tile=16)

    def point(us, config):
        return {"us": us, "err": 1e-7, "config": dict(vars(config))}

    rows = [{"layer": "vgg16_fc6", "in": 25088, "out": 4096, "batch": 16,
             "float32_untuned": point(136.0, heuristic), "float32_rows32_tile16": point(93.0, big),
             "float16_untuned": point(120.0, heuristic), "float16_rows32_tile16": point(118.0, big)},
            {"layer": "bert_l_ffn1", "in": 1024, "out": 4096, "batch": 16,
             "float32_untuned": point(9.0, heuristic), "float32_rows32_tile16": point(5.0, big)}]
    run = tables / "sweep.jsonl"
    run.write_text("\n".join(json.dumps(r) for r in [{"environment": {}}, *rows]) + "\n")
    ship_linear_tiles.main([str(run), "--table", str(table)])
    assert "1 linear records from 1 layer/batch rows" in capsys.readouterr().out
    assert linear_knobs.lookup(25088, 4096, 16, "sm_90") == big
    assert linear_knobs.lookup(25088, 4096, 16, "sm_90", "float16") is None  # a 1.7% tie
    assert linear_knobs.lookup(1024, 4096, 16, "sm_90") is None  # held out
    assert conv_knobs.lookup(VGG_CONV3_2, "sm_90") == GpuConfig()


def test_every_shipped_linear_record_is_a_point_of_its_tuning_space():
    """A tuning job starts from the knobs an untuned compile uses: each shipped linear record
    must be representable in the tuning space of its layer (here at 90% sparsity, a CSR weight
    of the record's shape with a tenth of each row non-zero)."""
    import tvm

    from escoin_tvm.kernels.linear.weight_format import SparseLinearWeight
    from escoin_tvm.kernels.linear.knobs import untuned_linear_config
    from escoin_tvm.kernels.linear.tuning_space import linear_representable

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    table = json.loads(next(d / "pretuned-sm_90.json" for d in knob_table.SCHEDULES_DIRS
                            if (d / "pretuned-sm_90.json").is_file()).read_text())
    assert table[linear_knobs.SECTION]
    for record in table[linear_knobs.SECTION]:
        n, k, batch = record["out_features"], record["in_features"], record["batch"]
        per_row = k // 10
        weight = SparseLinearWeight(
            np.arange(n + 1, dtype=np.int64) * per_row,
            np.tile(np.arange(per_row, dtype=np.int16) * 10, n),
            np.ones(n * per_row, record["dtype"]), (n, k))
        config = untuned_linear_config(batch, weight, target)
        assert config == linear_knobs.lookup(k, n, batch, "sm_90", record["dtype"])
        assert linear_representable(batch, weight, target, config), record["layer"]
