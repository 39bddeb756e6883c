"""Ship tuning results as the untuned defaults: merge tune_layers.py rows into a schedules/ table.

A row's tuned knobs replace the table's config for that shape when the tuned kernel beat the
table's config, both timed in the same run, by more than ``--min-gain`` (timing noise on one GPU
is about 1%; a knob set that only ties the shipped one is not worth the churn). Shapes the table
lacks get the tuned knobs. When several runs hold the same layer and batch, the last one counts
(runs are read in the order given).

Usage: python -m experiments.tuning.merge_tuned RUN1.jsonl RUN2.jsonl ... \
           --table schedules/pretuned-sm_90.json [--out NEW.json] [--min-gain 1.02]
"""
from __future__ import annotations

import argparse
from pathlib import Path


from experiments.benchmarks.layers import LAYERS
from experiments.reports.report_tuning import task_rows


def winning_records(rows, min_gain: float = 1.02) -> list:
    """conv_knobs.record entries for the rows (``task_rows``) whose tuned kernel beat the shipped
    config."""
    from escoin_tvm.kernels.conv2d import knobs as conv_knobs
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    shapes = {name: rest for name, *rest in LAYERS}
    records = []
    for row in rows:
        tuned = row.get("configs", {}).get("tuned")
        if tuned is None or row["tuned_us"] * min_gain >= row.get("pretuned_us", float("inf")):
            continue
        chw, wshape, stride, pad, groups = shapes[row["layer"]]
        spec = Conv2dSpec.create((row["batch"], *chw), wshape, stride=stride, padding=pad,
                                 groups=groups)
        records.append(conv_knobs.record(
            f"{row['layer']}_b{row['batch']}", spec, GpuConfig(**tuned), row["tuned_us"],
            pretuned_us=row.get("pretuned_us"),
            source=f"tune_layers, {row['run']} ({row['trials']} trials)"))
    return records


def last_rows(runs) -> list:
    """The task rows of tune_layers.py runs, the last row of each (layer, batch)."""
    return list({(row["layer"], row["batch"]): row
                 for run in runs for row in task_rows(run)}.values())


def main(argv=None):
    from escoin_tvm.kernels import knob_table
    from escoin_tvm.kernels.conv2d import knobs as conv_knobs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--table", required=True, help="the schedules/ table to merge into")
    parser.add_argument("--out", default="", help="where to write the merged table "
                        "(default: over --table)")
    parser.add_argument("--min-gain", type=float, default=1.02)
    args = parser.parse_args(argv)
    rows = last_rows(args.runs)
    records = winning_records(rows, args.min_gain)
    knob_table.write_table(Path(args.out or args.table), {conv_knobs.SECTION: conv_knobs.merge(records, args.table, replace=True)},
                         **knob_table.table_header(args.table))
    for r in records:
        shipped = f"{r['pretuned_us']:.1f}" if r["pretuned_us"] else "not in the table"
        print(f"{r['layer']}: {shipped} -> {r['time_us']:.1f} us")
    print(f"{len(records)} of {len(rows)} tasks merged into {args.out or args.table}")


if __name__ == "__main__":
    main()
