"""Stand-ins that let the CPU tests drive the GPU's dispatch decisions: the tensor-core family's
CPU schedule in place of its GPU one, and fake timers for measured dispatch in both paths."""
from dataclasses import replace

from escoin_tvm.kernels.vector_sparse.weight_format import block_density

DENSE_US = 100.0  # what the fake timers give the dense operator


def tensor_core_stand_in(monkeypatch):
    """A CUDA build's dispatch on the CPU: the facts of a CUDA target, the family's CPU
    schedule standing in for the tensor-core one."""
    from escoin_tvm.kernels.vector_sparse import kernel
    from escoin_tvm.kernels.vector_sparse.schedule_cpu import schedule_cpu
    from escoin_tvm.transform import policy

    monkeypatch.setattr(kernel, "schedule_gpu", lambda sch, *args: schedule_cpu(sch))
    monkeypatch.setattr(kernel.tir_pipeline, "with_warp_fragments", lambda mod: mod)
    monkeypatch.setattr(policy, "is_gpu", lambda target: True)


def relax_family_times(monkeypatch, times_us: dict) -> list:
    """The Relax path's measured dispatch with each family's layer timed at ``times_us``
    (family name -> us) and dense at ``DENSE_US``; checks that each family is timed in a pass
    that offers it alone. Returns the list of the families timed, in order."""
    import escoin_tvm.measure

    timed = []

    def timer(call, make_pass, family):
        offered = [f.name for f in make_pass().policy.families]
        assert offered == [family]
        timed.append(family)
        return times_us[family] * 1e-6, DENSE_US * 1e-6

    timer.dense = lambda call: 50e-6
    monkeypatch.setattr(escoin_tvm.measure, "LayerTimer", lambda target: timer)
    return timed


def backend_family_times(monkeypatch, times_us: dict) -> list:
    """The backend's measured dispatch on the CPU as on a GPU: the facts of a GPU graph, each
    family's layer timed at ``times_us`` (family name -> us), PyTorch's at ``DENSE_US``.
    Returns the list of the families offered per layer, in order."""
    from escoin_tvm.torch_compile import backend

    facts = backend._facts
    monkeypatch.setattr(backend, "_facts", lambda candidate, weight: replace(
        facts(candidate, weight), on_gpu=True, block_density=block_density(weight)))
    timed = []

    def fake_time_layers(layers, shape, device, channels_last=False, graphs=True):
        timed.append([layer.family.name for layer in layers])
        return [times_us[layer.family.name] * 1e-6 for layer in layers], DENSE_US * 1e-6

    monkeypatch.setattr(backend, "_time_layers", fake_time_layers)
    return timed
