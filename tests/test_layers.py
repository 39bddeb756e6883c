"""The library's layout: the modules' imports follow the pipeline's layers, and the shared pieces
name no kernel family (docs/design.md, "Layout").

Read from the source, not from a running interpreter: every ``import`` and ``from ... import``
of a module counts, those inside functions too (an import circle that holds only because its
imports run late is still a circle).
"""
import ast
import importlib
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "escoin_tvm"

# Lowest first. A module belongs to the layer of its longest prefix here; it may import its
# own layer and the layers below.
LAYERS = [
    ("foundation", ["escoin_tvm.errors", "escoin_tvm.support", "escoin_tvm.models",
                    "escoin_tvm.prune"]),
    ("shared", ["escoin_tvm.kernels", "escoin_tvm.rules", "escoin_tvm.tuning"]),
    ("families", []),  # every subpackage of escoin_tvm.kernels (``families``)
    ("pass", ["escoin_tvm.transform"]),
    ("compile and export", ["escoin_tvm.frontend", "escoin_tvm.workarounds",
                            "escoin_tvm.pipeline", "escoin_tvm.measure",
                            "escoin_tvm.batch_variants", "escoin_tvm.runtime",
                            "escoin_tvm.compiler"]),
    ("model tuning", ["escoin_tvm.tuning.relax_integration"]),
    ("integrations", ["escoin_tvm", "escoin_tvm.torch_compile", "escoin_tvm.cli",
                      "escoin_tvm.demo", "escoin_tvm.comparison"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
FAMILIES = sorted({name.split(".")[2] for name in MODULES
                   if name.startswith("escoin_tvm.kernels.") and
                   (PACKAGE / "kernels" / name.split(".")[2]).is_dir()})


def family_of(module: str):
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "kernels" and parts[2] in FAMILIES \
        else None


def layer_of(module: str) -> int:
    if family_of(module):
        return [name for name, _ in LAYERS].index("families")
    best = max(((len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS)
                for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    assert best is not None, f"{module} is in no layer of tests/test_layers.py"
    return best[1]


def imports(module: str):
    """The escoin_tvm modules ``module`` imports (a name imported from a package is the
    package's submodule where there is one)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in MODULES else source)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)
    assert FAMILIES == ["conv2d", "linear", "vector_sparse"]


def test_no_import_goes_to_a_higher_layer():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in GRAPH.items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_shared_module_imports_a_family_and_no_family_another():
    wrong = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in sorted(deps)
             if family_of(d) and layer_of(m) < layer_of(d) or
             family_of(m) and family_of(d) and family_of(m) != family_of(d)]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    done, active, path = set(), set(), []

    def visit(module):
        active.add(module)
        path.append(module)
        for dep in sorted(GRAPH[module]):
            if dep in active:
                circle = path[path.index(dep):] + [dep]
                pytest.fail("import circle: " + " -> ".join(circle))
            if dep not in done:
                visit(dep)
        active.discard(module)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        if module not in done:
            visit(module)


def test_the_checks_see_an_upward_import_and_a_circle():
    """The graph reader finds imports inside functions and relative ones: the compiler's
    tuning log and the frontend's workarounds are both imported so."""
    assert "escoin_tvm.tuning.log" in GRAPH["escoin_tvm.compiler"]
    assert "escoin_tvm.workarounds" in GRAPH["escoin_tvm.frontend"]
    assert "escoin_tvm.compiler" in GRAPH["escoin_tvm.tuning.relax_integration"]
    assert layer_of("escoin_tvm.tuning.relax_integration") > layer_of("escoin_tvm.compiler")


@pytest.mark.parametrize("module", sorted(m for m in MODULES
                                          if m.startswith("escoin_tvm.rules.")))
def test_the_rules_folder_holds_one_dlight_rule_per_file(module):
    from tvm.s_tir.dlight.base import ScheduleRule

    loaded = importlib.import_module(module)
    rules = [obj for _, obj in inspect.getmembers(loaded, inspect.isclass)
             if issubclass(obj, ScheduleRule) and obj.__module__ == module]
    assert len(rules) == 1, f"{module} defines {[r.__name__ for r in rules]}"
