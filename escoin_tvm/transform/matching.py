"""Matching chains of calls in a Relax function without changing it: what the Escoin passes'
patterns share.

``claim`` tries dataflow patterns (``tvm.relax.dpl``) on every binding, the patterns in the order
given (longest first, as ``FuseOpsByPattern`` orders its own), and claims a match when its
check accepts it and none of its bindings is claimed already. ``FunctionIndex.absorbed`` says
which bindings a match would fold away, and refuses a match whose intermediate values are used
outside it. ``ChainRewriter`` then replaces each claimed chain's root binding by what the pass
lowers it to, and drops the bindings it absorbs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import tvm
from tvm import relax
from tvm.relax.dpl import CallPattern
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..errors import EscoinError


def bindings(mod: tvm.IRModule):
    """(block, binding) for every binding of the module's Relax functions, in program order."""
    for func in mod.functions.values():
        if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            for block in func.body.blocks:
                for binding in block.bindings:
                    yield block, binding


def decide_calls(mod: tvm.IRModule, op: tvm.ir.Op, decide: Callable, report: list,
                 on_decision: Optional[Callable[[], None]] = None) -> Dict[relax.Call, int]:
    """Appends ``decide(call, index)`` for every call of ``op``, in program order, to ``report``
    and returns the report index of each call that goes to an Escoin kernel. A call outside a
    dataflow block stays dense: the rewrite replaces dataflow bindings only."""
    chosen: Dict[relax.Call, int] = {}
    for block, binding in bindings(mod):
        call = binding.value
        if not (isinstance(call, relax.Call) and call.op.same_as(op)):
            continue
        decision = decide(call, len(report))
        if decision.kernel != "dense":
            if isinstance(block, relax.DataflowBlock):
                chosen[call] = len(report)
            else:
                decision.kernel, decision.reason = "dense", "outside a dataflow block"
        report.append(decision)
        if on_decision is not None:
            on_decision()
    return chosen


@dataclass
class FunctionIndex:
    """Each var's value, each value's var, each var's users, and the dataflow bindings."""

    var2val: dict
    value_var: dict
    users: dict
    bindings: list

    @staticmethod
    def of(func: relax.Function) -> "FunctionIndex":
        var2val = relax.analysis.get_var2val(func)
        blocks = [b for b in func.body.blocks if isinstance(b, relax.DataflowBlock)]
        users = {var: list(used_by) for block in blocks
                 for var, used_by in relax.analysis.udchain(block).items()}
        bindings = [b for block in blocks for b in block.bindings
                    if isinstance(b, relax.VarBinding)]
        return FunctionIndex(var2val, {v: k for k, v in var2val.items()}, users, bindings)

    def var_of(self, expr) -> relax.Expr:
        """The var a value is bound to (a matched call matches as its value), else itself."""
        return self.value_var.get(expr, expr)

    def absorbed(self, matched: dict, root: relax.Var) -> Optional[List[relax.Var]]:
        """The vars of the match's own calls other than ``root``, or None when one of them is
        not a dataflow var or is used outside the match (it must not be folded away)."""
        inside = {self.value_var[m] for p, m in matched.items()
                  if isinstance(p, CallPattern) and m in self.value_var}
        intermediates = [var for var in inside if not var.same_as(root)]
        for var in intermediates:
            if not isinstance(var, relax.DataflowVar) or \
                    any(user not in inside for user in self.users.get(var, [])):
                return None
        return intermediates


def claim(index: FunctionIndex, patterns: Iterable, check: Callable) -> Dict[relax.Var, object]:
    """{root var: check's result} of the accepted matches. Each item of ``patterns`` has a
    ``pattern``; ``check(item, matched, root)`` returns None or a result with ``root`` and
    ``intermediates``."""
    results: Dict[relax.Var, object] = {}
    claimed = set()
    for item in patterns:
        for binding in index.bindings:
            if binding.var in claimed:
                continue
            matched = item.pattern.extract_matched_expr(binding.value, index.var2val)
            if matched is None:
                continue
            result = check(item, matched, binding.var)
            if result is not None and not claimed.intersection([result.root,
                                                                *result.intermediates]):
                claimed.update([result.root, *result.intermediates])
                results[result.root] = result
    return results


@mutator
class ChainRewriter(PyExprMutator):
    """Rewrites a module's functions: the root binding of each chain becomes ``lower(chain,
    rewriter)`` (an expression; ``rewriter.builder_`` may emit bindings before it and
    ``rewriter.visit_expr`` maps the chain's inputs), the chain's intermediate bindings
    disappear. An EscoinError ``lower`` raises is kept as ``error``: it leaves TVM's mutator as
    a RuntimeError."""

    def __init__(self, mod: tvm.IRModule, lower):
        super().__init__(mod)
        self.lower = lower
        self.chains: Dict[relax.Var, object] = {}
        self.absorbed = set()
        self.error: Optional[EscoinError] = None

    def rewrite(self, func: relax.Function, chains: Dict[relax.Var, object]) -> relax.Function:
        self.chains = chains
        self.absorbed = {var for chain in chains.values() for var in chain.intermediates}
        return self.visit_expr(func)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.absorbed:
            return
        chain = self.chains.get(binding.var)
        if chain is None:
            super().visit_var_binding_(binding)
            return
        try:
            value = self.lower(chain, self)
        except EscoinError as err:
            self.error = err
            raise
        emit = self.builder_.emit if isinstance(binding.var, relax.DataflowVar) \
            else self.builder_.emit_output
        self.set_var_remap(binding.var, emit(value, binding.var.name))


def rewrite_chains(mod: tvm.IRModule, find, lower) -> tvm.IRModule:
    """``mod`` with the chains ``find(func)`` returns in each Relax function rewritten by
    ``lower`` (``ChainRewriter``); an EscoinError of ``lower``'s is raised as itself."""
    rewriter = ChainRewriter(mod, lower)
    try:
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
                chains = find(func)
                if chains:
                    rewriter.builder_.update_func(gvar, rewriter.rewrite(func, chains))
    except Exception:
        if rewriter.error is not None:
            raise rewriter.error from None
        raise
    return rewriter.builder_.get()
