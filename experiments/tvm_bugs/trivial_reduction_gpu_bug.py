"""TVM 0.27 bug: a one-element reduction fused with its epilogue gets CUDA code that applies
the epilogue twice. Linear(1, 3) on CUDA with plain TVM (dispatch_by="none") computes
b + (b + x * w); the generated kernel shows it (no GPU needed to see the source):

    T_add[i] = param_1[i % 3];
    T_add[i] = param_1[i % 3] + (T_add[i] + lv[i / 3] * param_0[i % 3]);

escoin_tvm.compile works around it (escoin_tvm/workarounds.py). Run: python this_file.py
"""
import torch

import escoin_tvm

model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 3)).eval()
compiled = escoin_tvm.compile(model, (torch.randn(2, 1, 1, 1),), target={"kind": "cuda", "arch": "sm_90"},
                              dispatch_by="none")


def walk(module):
    for imported in module.imports:
        if imported.kind == "cuda":
            source = imported.inspect_source()
            print(source[source.index('extern "C" __global__ void __launch_bounds__'):])
        walk(imported)


walk(compiled.executable.mod)
