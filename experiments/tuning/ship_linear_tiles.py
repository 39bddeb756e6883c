"""Ship the best knobs of ``linear_tiles`` sweeps as the untuned defaults of the benchmark's FC
layers: their records in the linear section of a schedules/ table.

For each benchmark FC layer (AlexNet's and VGG-16's fc6-fc8; the sweep's unseen and large
shapes stay out, so that they keep judging the heuristic), batch and dtype of the sweeps, the
fastest config goes into the table when it beat the heuristic ("untuned" in the sweep), timed in
the same run, by more than ``--min-gain``. When several runs hold the same layer, batch and
dtype, the last one counts. The table's convolution records are kept as they are.

Usage: python -m experiments.tuning.ship_linear_tiles RUN1.jsonl [RUN2.jsonl ...]
           --table schedules/pretuned-sm_90.json [--min-gain 1.05]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.benchmarks.bench_fc import FC_LAYERS


def sweep_rows(runs) -> dict:
    """{(layer, batch): row} of the benchmark layers in linear_tiles result files, the last
    run's row of each."""
    names = {name for name, *_ in FC_LAYERS}
    rows = {}
    for run in runs:
        for line in Path(run).read_text().splitlines():
            row = json.loads(line)
            if row.get("layer") in names:
                rows[(row["layer"], row["batch"])] = {**row, "run": Path(run).name}
    return rows


def winning_records(rows, min_gain: float = 1.05) -> list:
    """linear_knobs.record entries: per row and dtype, the sweep's fastest config where it
    beat the heuristic by more than ``min_gain``."""
    from escoin_tvm.kernels.linear import knobs as linear_knobs
    from escoin_tvm.kernels.linear.schedule_gpu import LinearGpuConfig

    records = []
    for row in rows.values():
        dtypes = {key.split("_", 1)[0] for key, value in row.items()
                  if key.endswith("_untuned") and isinstance(value, dict)}
        for dtype in sorted(dtypes):
            heuristic = row[f"{dtype}_untuned"]["us"]
            label, best = min(((key, value) for key, value in row.items()
                               if key.startswith(dtype + "_") and isinstance(value, dict)),
                              key=lambda kv: kv[1]["us"])
            if best["us"] * min_gain >= heuristic:
                continue
            records.append(linear_knobs.record(
                f"{row['layer']}_b{row['batch']}", row["in"], row["out"], row["batch"], dtype,
                LinearGpuConfig(**best["config"]), best["us"], heuristic_us=heuristic,
                source=f"linear_tiles, {row['run']} ({label.split('_', 1)[1]})"))
    return records


def main(argv=None):
    from escoin_tvm.kernels import knob_table
    from escoin_tvm.kernels.linear import knobs as linear_knobs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--table", required=True, help="the schedules/ table to write into")
    parser.add_argument("--min-gain", type=float, default=1.05)
    args = parser.parse_args(argv)
    rows = sweep_rows(args.runs)
    records = winning_records(rows, args.min_gain)
    knob_table.write_table(Path(args.table), {linear_knobs.SECTION: records},
                           **knob_table.table_header(args.table))
    for r in records:
        print(f"{r['layer']} {r['dtype']}: {r['heuristic_us']:.1f} -> {r['time_us']:.1f} us "
              f"({r['source']})")
    print(f"{len(records)} linear records from {len(rows)} layer/batch rows in {args.table}")


if __name__ == "__main__":
    main()
