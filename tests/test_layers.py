"""genperf's imports point down: every module belongs to a layer below, and imports only from lower layers (a
subpackage's modules may import each other, without cycles). Read from the source with ast, so the check sees
the imports inside functions too."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "genperf")

# Top to bottom. A name stands for the module or subpackage of that name and everything inside it.
LAYERS = [
    ["genperf"],  # the package's face: genperf.fit, genperf.load
    ["genperf.study"],
    ["genperf.train", "genperf.evaluate", "genperf.sample", "genperf.audit"],  # the commands
    ["genperf.trainer", "genperf.run"],  # a run trained, a run read back
    ["genperf.autocompile"],  # --compile auto's course through a run
    ["genperf.config"],  # every option
    ["genperf.families"],  # the model families: objective, build, options, likelihoods
    ["genperf.checkpoint", "genperf.faults", "genperf.runlog", "genperf.metrics", "genperf.perf", "genperf.models"],
    ["genperf.invertible"],
    [
        "genperf.layers",
        "genperf.data",
        "genperf.distributed",
        "genperf.precision",
        "genperf.options",
        "genperf.streams",
    ],
    ["genperf.ops"],
    [
        "genperf.errors",
        "genperf.compiled",
        "genperf.schedule",
        "genperf.sharded",
        "genperf._C",
        "genperf.kernels",
    ],
    ["genperf.dtypes"],  # what the CPU computes fast: read by --amp's precision and by --compile auto
]


def _modules():
    """{dotted name: path} of every module under genperf/."""
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                dotted = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def _imports(path, modules):
    """The genperf modules a file imports (a `from genperf.x import y` of a module y counts as genperf.x.y)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "genperf"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "genperf":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules or alias.name in ("_C", "kernels") else node.module)
    return out


def _unit(name):
    """(layer index, unit) of a dotted module name: the most specific LAYERS entry that contains it."""
    best = None
    for i, layer in enumerate(LAYERS):
        for unit in layer:
            if (name == unit or name.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (i, unit)
    return best


def _graph():
    modules = _modules()
    return {m: _imports(path, modules) - {m} for m, path in modules.items()}


def upward_imports(graph):
    """Edges of `graph` that do not point to a lower layer (imports inside one subpackage excepted)."""
    upward = []
    for module, imports in graph.items():
        layer, unit = _unit(module)
        for target in imports:
            target_layer, target_unit = _unit(target)
            if target_unit == unit and unit != "genperf":
                continue  # inside one subpackage: checked for cycles
            if target_layer <= layer:
                upward.append(f"{module} -> {target}")
    return sorted(upward)


def cycles(graph):
    """The import cycles of `graph`, each as 'a -> b -> a'. The package's face (genperf) imports lazily inside
    its functions, so it is left out."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt in graph and nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state and node != "genperf":
            visit(node, [node])
    return found


def test_every_module_has_a_layer():
    assert [m for m in _graph() if _unit(m) is None] == []


def test_imports_point_down():
    assert upward_imports(_graph()) == []


def test_no_import_cycles():
    assert cycles(_graph()) == []


def test_the_checks_catch_what_they_guard_against():
    """Each check fails on a graph that breaks its rule (a check that cannot fail guards nothing)."""
    graph = _graph()
    graph["genperf.checkpoint"] = graph["genperf.checkpoint"] | {"genperf.train"}  # upward
    graph["genperf.runlog"] = graph["genperf.runlog"] | {"genperf.faults"}  # sideways, within one layer
    assert upward_imports(graph) == ["genperf.checkpoint -> genperf.train", "genperf.runlog -> genperf.faults"]
    graph = _graph()
    graph["genperf.data.loader"] = graph["genperf.data.loader"] | {"genperf.data.celeba"}  # a cycle in a package
    assert upward_imports(graph) == []
    assert cycles(graph) == ["genperf.data.celeba -> genperf.data.loader -> genperf.data.celeba"]
