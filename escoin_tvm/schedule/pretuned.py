"""Pre-tuned schedule knobs shipped in ``schedules/`` (TVM's old TopHub idea): per GPU
architecture, the best GpuConfig found for known convolution shapes (``records``) and the best
LinearGpuConfig for known fully-connected shapes (``linear_records``: in and out features, batch,
dtype). Used when the user gives no tuning log; shapes not in the table fall back to the
heuristic default."""
from __future__ import annotations

import json
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional

from ..spec import Conv2dSpec
from .gpu import GpuConfig
from .linear import LinearGpuConfig

# A source checkout or editable install reads the repository's schedules/; a wheel install reads
# the copy setup.py puts under <prefix>/share/escoin-tvm/schedules.
SCHEDULES_DIRS = (Path(__file__).resolve().parents[2] / "schedules",
                  Path(sys.prefix) / "share" / "escoin-tvm" / "schedules")


KEY_FIELDS = ("input_shape", "weight_shape", "stride", "padding", "dilation", "groups")
LINEAR_KEY_FIELDS = ("in_features", "out_features", "batch")


def _key(values) -> tuple:
    return tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in values)


def spec_key(spec: Conv2dSpec, dtype: str = "float32") -> tuple:
    return (*_key(getattr(spec, f) for f in KEY_FIELDS), dtype)


def _record_key(record: dict) -> tuple:
    """A record's key: its layer shape and dtype (records without one are float32)."""
    return (*_key(record[f] for f in KEY_FIELDS), record.get("dtype", "float32"))


def _linear_record_key(record: dict) -> tuple:
    return (*(record[f] for f in LINEAR_KEY_FIELDS), record.get("dtype", "float32"))


@lru_cache(maxsize=None)
def _tables(arch: str) -> tuple:
    """({conv key: GpuConfig}, {linear key: LinearGpuConfig}) of ``arch``'s table."""
    path = next((d / f"pretuned-{arch}.json" for d in SCHEDULES_DIRS
                 if (d / f"pretuned-{arch}.json").is_file()), None)
    if path is None:
        return {}, {}
    try:
        table = json.loads(path.read_text())
        return ({_record_key(r): GpuConfig(**r["config"]).validate() for r in table["records"]},
                {_linear_record_key(r): LinearGpuConfig(**r["config"]).validate()
                 for r in table.get("linear_records", [])})
    except (ValueError, KeyError, TypeError) as err:
        warnings.warn(f"ignoring the corrupt pre-tuned schedule table {path}: {err}")
        return {}, {}


def lookup(spec: Conv2dSpec, arch: str, dtype: str = "float32") -> Optional[GpuConfig]:
    """The shipped config for this exact layer and dtype on ``arch`` (sm_90a reads sm_90's
    table)."""
    return _tables(arch.rstrip("a"))[0].get(spec_key(spec, dtype))


def lookup_linear(in_features: int, out_features: int, batch: int, arch: str,
                  dtype: str = "float32") -> Optional[LinearGpuConfig]:
    """The shipped config for a fully-connected layer of this shape, batch and dtype on
    ``arch``."""
    return _tables(arch.rstrip("a"))[1].get((in_features, out_features, batch, dtype))


def record(name: str, spec: Conv2dSpec, config: GpuConfig, time_us: float, **extra) -> dict:
    """One entry of a pre-tuned table: the layer's shape key, its knobs and their time."""
    return {"layer": name, **{f: _field(getattr(spec, f)) for f in KEY_FIELDS},
            "config": dict(vars(config)), "time_us": time_us, **extra}


def _field(value):
    return list(value) if isinstance(value, tuple) else value


def merge(records, old_table: Optional[Path], replace: bool = False) -> list:
    """``records`` merged into the records of ``old_table`` (a schedules/ JSON file, if given):
    for a shape both have, the faster one stays, or with ``replace`` the new one (for records
    that beat the table's config re-measured in the same run: times from another run, or another
    timing method, are not comparable)."""
    if old_table is None or not Path(old_table).is_file():
        return list(records)
    merged = {_record_key(r): r for r in json.loads(Path(old_table).read_text())["records"]}
    for r in records:
        key = _record_key(r)
        if replace or key not in merged or r["time_us"] < merged[key]["time_us"]:
            merged[key] = r
    return list(merged.values())


def linear_record(name: str, in_features: int, out_features: int, batch: int, dtype: str,
                  config: LinearGpuConfig, time_us: float, **extra) -> dict:
    """One entry of a table's ``linear_records``."""
    return {"layer": name, "in_features": in_features, "out_features": out_features,
            "batch": batch, "dtype": dtype, "config": dict(vars(config)), "time_us": time_us,
            **extra}


def table_header(path: Path) -> dict:
    """The fields of a table file besides its records (``write_table``'s keyword arguments),
    for rewriting it with other records."""
    table = json.loads(Path(path).read_text())
    return {k: table[k] for k in ("arch", "gpu", "sparsity", "source", "date")}


def write_table(path: Path, records, *, arch: str, gpu: str, sparsity: float, source: str,
                date: str, linear_records=None) -> None:
    """A table in the format ``lookup`` reads; ``linear_records`` None keeps those the file at
    ``path`` has."""
    if linear_records is None and Path(path).is_file():
        linear_records = json.loads(Path(path).read_text()).get("linear_records")
    table = {"version": 1, "arch": arch, "gpu": gpu, "sparsity": sparsity, "source": source,
             "date": date, "records": list(records)}
    if linear_records:
        table["linear_records"] = list(linear_records)
    Path(path).write_text(json.dumps(table, indent=1))

