"""The import contract: the package's layers point one way, and no import cycle runs at import time.

The graph is read from the source with ``ast`` (nothing is imported), one edge per
``import`` of a ``celery_reliable`` module, of one of three kinds:

- **module**: runs when the importing module is imported.
- **type**: inside ``if TYPE_CHECKING:``; names a type and never runs.
- **function**: inside a function or method; runs when it is called.

The rules, and why each kind counts where it does:

- **No cycle among module-level imports.** Such a cycle makes the import order matter
  (a half-initialised module) and welds its modules into one. Type and function-level
  imports cannot fail that way, so they may close a loop, but only inside one layer:
- **Layers one way, for every kind of import.** A module imports its own layer or a
  lower one, never a higher one, not even for a type hint or lazily inside a function:
  a hint is knowledge of the higher module, and a deferred import is a hidden reach back
  up. So the composition root (``extension``) is imported only by the entry points
  above it, and ``store`` by nothing below it but the foundation.
- **Bootsteps are entry points.** Celery builds a bootstep with the worker or the
  consumer, which carries the app; a bootstep class may look the extension up, wherever
  it lives. Nothing else below the entry points may.

docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

#: Read from this checkout's files, not imported: a cycle must be reported, not crash.
PACKAGE = Path(__file__).resolve().parents[2] / "celery_reliable"
ROOT = "celery_reliable"

#: The layers, highest first. A module belongs to the layer of the longest name below that
#: is itself or one of its packages ("cli" holds cli.dlq; "__init__" is the package itself).
#: A new module goes where what it imports allows and what imports it needs it; a new
#: layer is a decision to record in docs/architecture.md.
LAYERS: list[tuple[str, set[str]]] = [
    ("entry points", {"__init__", "cli", "flower", "testing"}),
    ("composition root", {"extension"}),
    # The per-message path a worker runs.
    ("delivery pipeline", {"task", "delivery", "intake", "intake_messages"}),
    (
        "services",
        {
            "inbox",
            "outbox",
            "relay",
            "dead_letters",
            "poison",
            "retry",
            "classify",
            "breakers",
            "locks",
            "maintenance",
            "schedule",
            "admin",
            "health",
            "metrics",
        },
    ),
    ("messages and settings", {"settings", "message", "wire", "brokers", "rabbitmq"}),
    ("store", {"store"}),
    (
        "foundation",
        {
            "exceptions",
            "dead_lettered",
            "clock",
            "durations",
            "outage",
            "sanitize",
            "states",
            "signals",
        },
    ),
]


@dataclass(frozen=True)
class Edge:
    importer: str  # module names relative to the package: "store.sql", "__init__"
    imported: str
    kind: str  # "module", "type" or "function"
    where: str  # path:line of the import statement
    in_bootstep: bool  # the import sits inside a bootstep class

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({self.kind} import at {self.where})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts) if parts != ["__init__"] else "__init__"


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _is_bootstep(node: ast.ClassDef) -> bool:
    """A class built on one of Celery's bootstep classes (``bootsteps.StartStopStep``...)."""
    return any(ast.unparse(base).split(".")[-1].endswith("Step") for base in node.bases)


class _Imports(ast.NodeVisitor):
    """The package-internal imports of one module, each with its kind and context."""

    def __init__(self, name: str, path: Path, known: dict[str, Path]) -> None:
        self.name, self.path, self.known = name, path, known
        self.is_package = path.name == "__init__.py"
        self.kind, self.in_bootstep = "module", False
        self.edges: list[Edge] = []

    def _within(self, node: ast.AST, kind: str | None = None, bootstep: bool = False) -> None:
        saved = self.kind, self.in_bootstep
        self.kind = kind or self.kind
        self.in_bootstep = self.in_bootstep or bootstep
        self.generic_visit(node)
        self.kind, self.in_bootstep = saved

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        for statement in node.body:
            self._within(ast.Module(body=[statement], type_ignores=[]), "type")
        for statement in node.orelse:
            self.visit(statement)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._within(node, "function")

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._within(node, bootstep=_is_bootstep(node))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            package = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
            package = [] if package == ["__init__"] else package
            base = [ROOT, *package[: len(package) - node.level + 1]]
            absolute = ".".join([*base, node.module] if node.module else base)
        else:
            absolute = node.module or ""
        for alias in node.names:  # `from . import schedule` imports a module
            submodule = f"{absolute}.{alias.name}"
            self._add(node, submodule if self._relative(submodule) in self.known else absolute)

    def _relative(self, absolute: str) -> str:
        return "__init__" if absolute == ROOT else absolute.removeprefix(ROOT + ".")

    def _add(self, node: ast.stmt, absolute: str) -> None:
        if absolute != ROOT and not absolute.startswith(ROOT + "."):
            return
        where = f"{self.path.relative_to(PACKAGE.parent)}:{node.lineno}"
        imported = self._relative(absolute)
        self.edges.append(Edge(self.name, imported, self.kind, where, self.in_bootstep))


def import_graph() -> list[Edge]:
    known = modules()
    edges: list[Edge] = []
    for name, path in known.items():
        visitor = _Imports(name, path, known)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        edges.extend(edge for edge in visitor.edges if edge.imported != name)
    return edges


def layer_of(module: str) -> int | None:
    """The index in LAYERS (0 is the top) of the longest declared name that holds ``module``."""
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                best is None or len(name) > best[0]
            ):
                best = (len(name), index)
    return None if best is None else best[1]


def module_cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected groups of two or more modules, over module-level imports."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.kind == "module":
            graph.setdefault(edge.importer, set()).add(edge.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for following in sorted(graph.get(node, ())):
            if following not in index:
                connect(following)
                low[node] = min(low[node], low[following])
            elif following in stack:
                low[node] = min(low[node], index[following])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def upward(edges: list[Edge]) -> list[Edge]:
    """The imports of a higher layer's module, bootsteps looking up the extension aside."""
    found = []
    for edge in edges:
        importer, imported = layer_of(edge.importer), layer_of(edge.imported)
        if importer is None or imported is None or imported >= importer:
            continue
        if edge.in_bootstep and edge.imported == "extension":
            continue
        found.append(edge)
    return found


def report(edges: list[Edge]) -> str:
    lines = []
    for edge in edges:
        importer, imported = layer_of(edge.importer), layer_of(edge.imported)
        assert importer is not None
        assert imported is not None
        lines.append(f"  {edge}: {LAYERS[importer][0]} reaches up to {LAYERS[imported][0]}")
    return "\n".join(lines)


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in modules() if layer_of(name) is None)
    assert not unplaced, f"add these modules to LAYERS in {__file__}: {unplaced}"


def test_no_import_cycle_at_module_level():
    edges = import_graph()
    cycles = module_cycles(edges)
    lines = []
    for group in cycles:
        lines.append(f"cycle among {', '.join(group)}:")
        lines.extend(
            f"  {edge}"
            for edge in edges
            if edge.kind == "module" and edge.importer in group and edge.imported in group
        )
    assert not cycles, "module-level imports go round in a circle:\n" + "\n".join(lines)


def test_imports_point_down_the_layers():
    found = upward(import_graph())
    assert not found, "imports against the layers (see docs/architecture.md):\n" + report(found)


def test_the_layers_encode_the_contract():
    """Only the entry points sit above the extension; only the foundation below the store."""
    names = [name for name, _ in LAYERS]
    assert names.index("composition root") == 1
    assert LAYERS[1][1] == {"extension"}
    assert names[names.index("store") + 1 :] == ["foundation"]
    declared = [name for _, layer in LAYERS for name in layer]
    assert len(declared) == len(set(declared)), "a name is declared in two layers"


def test_the_graph_reader_sees_each_kind_of_import():
    """The reader itself: relative imports resolve, and kinds and bootsteps are told apart."""
    source = (
        "from . import database, Database\n"
        "from .tables import Tables\n"
        "if TYPE_CHECKING:\n"
        "    from ..extension import Reliable\n"
        "class Step(bootsteps.StartStopStep):\n"
        "    def start(self, parent):\n"
        "        from ..extension import Reliable\n"
        "def later():\n"
        "    import celery_reliable.task\n"
    )
    path = PACKAGE / "store" / "example.py"  # the name it resolves from, never written
    visitor = _Imports("store.example", path, modules())
    visitor.visit(ast.parse(source))
    assert [(e.imported, e.kind, e.in_bootstep) for e in visitor.edges] == [
        ("store.database", "module", False),  # a module
        ("store", "module", False),  # a name from the package
        ("store.tables", "module", False),
        ("extension", "type", False),
        ("extension", "function", True),
        ("task", "function", False),
    ]
    assert upward(visitor.edges) == [visitor.edges[3], visitor.edges[5]]
