"""Tuning spread over this machine's GPUs through TVM's RPC tracker, end to end.

Starts a TVM RPC tracker on localhost and one RPC server per GPU (``CUDA_VISIBLE_DEVICES=i``,
all under one key), then runs the real command line on a pruned model:
  escoin tune MODEL.pt2 --target cuda --trials N --log LOG --rpc-tracker 127.0.0.1:P --rpc-key K
then compiles the model with that log (``escoin_tvm.compile(..., tuning_log=LOG)``), checks its
output against PyTorch fp32 (TF32 off) and records which tuned configs the compile used.
The trials are measured on the servers (MetaSchedule's RPC runner, its own time_evaluator).
CUDA servers run with --no-fork: TVM 0.27's rpc_server forks each session from a process that
has initialised CUDA, and every trial then fails with cudaErrorInitializationError
(results/rpc-tuning-fork-failure-H100.log); --no-fork spawns a fresh interpreter per session
instead, about 7 s per trial on the H100 machine.

Usage: python -m experiments.tuning.tune_rpc [--model alexnet] [--sparsity 0.9] [--size 224]
           [--trials 4] [--servers 0 (one per GPU)] [--out experiments/results]
       (--target llvm: the same on CPU RPC servers, to try the script on a machine without a GPU)
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.common import RESULTS, result_path

ROOT = Path(__file__).resolve().parents[2]  # the repository: RPC servers import escoin_tvm from it
KEY = "escoin-gpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_servers(port: int, count: int, timeout: float = 60) -> dict:
    from tvm import rpc

    deadline = time.time() + timeout
    while True:
        try:
            summary = rpc.connect_tracker("127.0.0.1", port).summary()
            if summary.get("queue_info", {}).get(KEY, {}).get("free", 0) >= count:
                return summary
        except Exception:  # the tracker is still starting
            summary = None
        if time.time() > deadline:
            raise RuntimeError(f"{count} RPC servers did not register within {timeout} s: {summary}")
        time.sleep(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--servers", type=int, default=0, help="RPC servers (default: one per GPU)")
    parser.add_argument("--target", default="cuda", choices=("cuda", "llvm"))
    parser.add_argument("--server-flags", default=None, help="flags for tvm.exec.rpc_server "
                        "(default: --no-fork for cuda: TVM 0.27's forked sessions cannot "
                        "initialise CUDA)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.server_flags is None:
        args.server_flags = "--no-fork" if args.target == "cuda" else ""

    import torch

    import escoin_tvm
    from escoin_tvm import models, prune
    from escoin_tvm.tuning import TuningLog

    gpus = torch.cuda.device_count() if args.target == "cuda" else 0
    if args.target == "cuda" and not gpus:
        raise SystemExit("no GPU: run with --target llvm to try it on CPU RPC servers")
    servers = args.servers or max(gpus, 1)
    device = "cuda" if gpus else "cpu"
    work = Path(tempfile.mkdtemp(prefix="escoin-rpc-"))
    model = prune.magnitude(models.build(args.model), args.sparsity).eval()
    x = torch.randn(1, 3, args.size, args.size)
    torch.export.save(torch.export.export(model, (x,)), work / "model.pt2")

    port = free_port()
    env = dict(os.environ)
    python = sys.executable
    procs = [subprocess.Popen([python, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(port), "--port-end", str(port + 1)], env=env)]
    try:
        for i in range(servers):
            procs.append(subprocess.Popen(
                [python, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}",
                 "--key", KEY, "--host", "127.0.0.1", "--port", str(9100 + 10 * i),
                 "--port-end", str(9109 + 10 * i), *args.server_flags.split()],
                env={**env, "CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus else env))
        summary = wait_for_servers(port, servers)
        log = work / "log"
        command = [python, "-m", "escoin_tvm.cli", "tune", str(work / "model.pt2"), "--target",
                   args.target, "--trials", str(args.trials), "--trials-per-iter", str(args.trials),
                   "--log", str(log), "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", KEY]
        print("$", " ".join(command), flush=True)
        started = time.time()
        # streamed, so that a stopped run still shows how far the job got and its warnings
        tune = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**env, "PYTHONPATH": f"{ROOT}:{env.get('PYTHONPATH', '')}"})
        tune_output = []
        for line in tune.stdout:
            print(line, end="", flush=True)
            tune_output.append(line)
        tune.wait()
        tuning_s = time.time() - started
        if tune.returncode:
            raise SystemExit(f"escoin tune failed with exit status {tune.returncode}")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)

    tuning_log = TuningLog(log)
    compiled = escoin_tvm.compile(model, (x,), target=args.target, tuning_log=log)
    report = compiled.report()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        reference = model.to(device)(x.to(device))
        out = compiled(x.to(device))
    err = float((out - reference).abs().max() / reference.abs().max())
    # the compile must have taken every Escoin layer's schedule from the log
    escoin_layers = [layer for layer in compiled.layers if layer["kernel"] == "escoin"]
    tuned_layers = sum(str(layer.get("schedule")).startswith("tuned") for layer in escoin_layers)
    row = {"model": args.model, "sparsity": args.sparsity, "size": args.size,
           "trials_per_task": args.trials, "server_flags": args.server_flags, "gpus": gpus,
           "servers": servers, "target": args.target, "gpu": torch.cuda.get_device_name(0) if gpus else None,
           "tracker_servers": summary.get("server_info"), "tuning_s": tuning_s,
           "records": len(tuning_log.database.get_all_tuning_records()),
           "escoin_layers": len(escoin_layers), "tuned_layers": tuned_layers,
           "max_rel_err": err, "correct": err < 1e-4, "report": report,
           "tune_output_tail": "".join(tune_output)[-4000:]}
    print(report)
    print(f"tuning through the tracker: {tuning_s:.0f} s with {servers} server(s) "
          f"({args.target}, {gpus} GPU(s)); {row['records']} records; compiled with the log: "
          f"{tuned_layers} of {len(escoin_layers)} Escoin layers tuned, max relative error vs "
          f"PyTorch {err:.1e} -> {'OK' if row['correct'] else 'MISMATCH'}")
    out_path = result_path("rpc-tuning", ext="json", out=args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(row, indent=1, default=str) + "\n")
    print(f"wrote {out_path}")
    return 0 if row["correct"] and tuned_layers == len(escoin_layers) else 1


if __name__ == "__main__":
    sys.exit(main())
