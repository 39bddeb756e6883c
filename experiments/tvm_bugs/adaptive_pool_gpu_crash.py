"""Is the GPU segfault TVM's dense path for an upsampling AdaptiveAvgPool2d? Prints each step."""
import sys

import torch

import escoin_tvm


def p(*a):
    print(*a, flush=True)


cases = {
    "pool_up_1to6": (torch.nn.AdaptiveAvgPool2d((6, 6)), (2, 8, 1, 1)),
    "pool_same_6": (torch.nn.AdaptiveAvgPool2d((6, 6)), (2, 8, 6, 6)),
    "pool_down_13to6": (torch.nn.AdaptiveAvgPool2d((6, 6)), (2, 8, 13, 13)),
    "linear": (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(288, 64)), (2, 8, 6, 6)),
    "maxpool_3_2": (torch.nn.MaxPool2d(3, 2), (2, 8, 15, 15)),
}
for name in sys.argv[1:] or cases:
    model, shape = cases[name]
    x = torch.randn(*shape, device="cuda")
    p(name, "compile")
    c = escoin_tvm.compile(model.eval(), (x,), target="cuda")
    p(name, "run")
    out = c(x)
    torch.cuda.synchronize()
    p(name, "ok", (out - model(x)).abs().max().item())
