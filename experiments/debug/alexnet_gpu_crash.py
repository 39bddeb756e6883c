"""Localises a segfault seen in the GPU test of AlexNet (64x64): prints each step."""
import sys, torch, numpy as np
sys.path.insert(0, "tests")
import escoin_tvm
from test_compile import pruned
def p(*a): print(*a, flush=True)
torch.backends.cudnn.allow_tf32 = False
model = pruned("alexnet").cuda()
x = torch.randn(2, 3, 64, 64, device="cuda")
threshold = float(sys.argv[1]) if len(sys.argv) > 1 else None
p("compile, threshold", threshold)
c = escoin_tvm.compile(model, (x,), target="cuda", sparsity_threshold=threshold)
p("compiled"); p(c.report())
with torch.no_grad():
    ref = model(x)
p("run")
out = c(x)
torch.cuda.synchronize()
p("ran", (out - ref).abs().max().item())
