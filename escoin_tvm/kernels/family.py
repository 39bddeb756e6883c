"""A kernel family as the dispatch paths see it.

Each family's package defines one ``KernelFamily`` (``FAMILY`` in its ``__init__.py``); the
Relax pass (``transform/``) and the torch.compile backend each list, per operator, the families
they dispatch to, in order of preference, and a layer goes to the first whose ``problem`` has
nothing against it. A new family is a new folder with its ``FAMILY``, plus a line in each of
those two lists; its shipped knobs are a section of its own in the knob table
(``knob_table.py``), which needs no change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

from tvm import relax

from .eligibility import LayerFacts

OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps must leave a scheduled kernel alone


@dataclass(frozen=True)
class KernelFamily:
    """``name``: the report's kernel column for the family's layers; ``op``: the operator it
    computes ("conv2d" or "linear"); ``problem(facts)``: why a layer is not for it (None: it
    is); ``relax_call(builder, ...) -> Lowered``: the Relax pass's lowering of a matched layer
    (the arguments are the operator's: ``transform/sparse_conv2d.py`` and ``sparse_linear.py``
    give them); ``torch_kernel(layer, shape, device)``: the callable kernel of a backend layer
    (``torch_compile/ops.py``) for an input shape; ``note(facts)``: what the report adds about a
    layer the family takes (its weight's format), "" by default; ``specialized``: the family
    takes only layers of a particular structure (the tensor-core one), so when no family takes
    a layer its reason is not the one the report gives."""

    name: str
    op: str
    problem: Callable[[LayerFacts], Optional[str]]
    relax_call: Callable[..., "Lowered"]
    torch_kernel: Callable
    note: Callable[[LayerFacts], str] = lambda facts: ""
    specialized: bool = False


@dataclass
class Lowered:
    """A layer as a family lowered it for the Relax pass: the expression that computes it
    (bindings it needs emitted before it), the kernel's record (its ``layer`` name and
    ``task(target)``, the tuning task), and what the report says of it."""

    call: object
    kernel: object
    schedule: str  # where the knobs came from: tuned, pre-tuned, default, given
    config: dict
    epilogue: str


def choose(families: Sequence[KernelFamily], facts: LayerFacts
           ) -> Tuple[Optional[KernelFamily], Optional[str]]:
    """(the first of ``families`` that takes the layer, None) or (None, the reason of the last
    family that is not ``specialized``: the most general one, whose reason is the one the user
    can act on; the last family's if all are)."""
    reasons = []
    for family in families:
        reason = family.problem(facts)
        if reason is None:
            return family, None
        reasons.append((family.specialized, reason))
    if not reasons:
        return None, f"no kernel family computes {facts.op}"
    general = [reason for specialized, reason in reasons if not specialized]
    return None, (general or [reasons[-1][1]])[-1]


def takers(families: Sequence[KernelFamily], facts: LayerFacts) -> Tuple[KernelFamily, ...]:
    """Every one of ``families`` that takes the layer, in order of preference (what measured
    dispatch times it on)."""
    return tuple(family for family in families if family.problem(facts) is None)


def epilogue_arguments(bias, residual, out_channels: int) -> list:
    """The Relax arguments a kernel's fused epilogue takes after the weight's arrays: the
    per-channel ``bias`` (a numpy array, passed in float32, in which the epilogue adds it)
    and the ``residual`` expression, each where present."""
    args = []
    if bias is not None:
        args.append(relax.const(bias.reshape(out_channels).astype("float32")))
    if residual is not None:
        args.append(residual)
    return args


def relax_function(mod):
    """The scheduled PrimFunc of a kernel's IRModule as the pass adds it to the model's
    module: private, marked scheduled, and opaque to operator fusion."""
    return (mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
            .with_attr("op_pattern", OPAQUE))


def passed_over(families: Sequence[KernelFamily], chosen: KernelFamily,
                facts: LayerFacts) -> str:
    """Why each family preferred to ``chosen`` did not take the layer, as a suffix of the
    report's reason ("; not vector-sparse: ..."; "" when ``chosen`` is the first), then
    ``chosen``'s own note on the layer."""
    notes = []
    for family in families:
        if family is chosen:
            break
        notes.append(f"; not {family.name}: {family.problem(facts)}")
    return "".join(notes) + chosen.note(facts)
