"""The package's floors and its import graph, read with ``ast`` (nothing is imported or run).

:data:`LAYERS` is the floor table of ``docs/architecture.md``; ``tests/test_layers.py`` holds the
package to it. Standard library only. The questions, each a function a test can import:

- ``module_graph(root)``: module -> modules of the package it imports at module level
  (relative imports and ``from . import x`` resolved; a ``from pkg import name`` that names a
  submodule points at the submodule). ``late_graph(root)``: the same for imports inside a
  function or method body ("late" imports: they hide a cycle from Python, not from us).
  Imports under ``if TYPE_CHECKING:`` are left out of both (they never run).
- ``cycles(graph)``: the strongly connected components with more than one module (or a
  module importing itself), each sorted, largest first.
- ``upward_imports(graph, layers)``: every edge whose target sits on a higher floor than its
  source, by a layer table ``{dotted prefix: floor}`` (longest prefix wins).
- ``external_imports(root)``: module -> top-level names of what it imports from outside the
  package (for "rclpy only under ros/").

- ``unresolved(root)``: imports of a ``region_perception`` module that does not exist (a moved
  module's old path, a typo).

Run as a script: ``python -m region_perception.testing.layers [PACKAGE_DIR]`` prints the
cycles (module level, and with late imports added), each module's floor, the upward imports,
the unresolved imports and the modules outside ``ros/`` that import rclpy; exit status 1 when
any of them is found.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Reading the tree
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One resolved import statement of one module."""

    source: str  # the importing module, dotted
    target: str  # the imported module of the package, dotted
    line: int
    late: bool  # inside a function or method body
    statement: str  # as written, for reports


def module_files(package_root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` below ``package_root`` (namespace
    sub-packages without ``__init__.py`` included; ``__pycache__`` left out). A package's
    ``__init__.py`` is named after the package."""
    package_root = Path(package_root).resolve()
    base = package_root.name
    out: dict[str, Path] = {}
    for path in sorted(package_root.rglob("*.py")):
        rel = path.relative_to(package_root)
        if "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
            continue
        parts = [base, *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(module: str, files: Mapping[str, Path]) -> bool:
    path = files.get(module)
    if path is not None:
        return path.name == "__init__.py"
    # a namespace package: no file of its own, but modules below it
    return any(m.startswith(module + ".") for m in files)


def _known(module: str, files: Mapping[str, Path]) -> bool:
    return module in files or _is_package(module, files)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_imports(tree: ast.Module) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it is late (inside a function); TYPE_CHECKING blocks skipped."""

    def visit(node: ast.AST, late: bool) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, late
            elif isinstance(child, ast.If) and _type_checking(child.test):
                yield from visit(ast.Module(body=child.orelse, type_ignores=[]), late)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(child, True)
            else:
                yield from visit(child, late)

    yield from visit(tree, False)


def _resolve(module: str, node: ast.Import | ast.ImportFrom, files: Mapping[str, Path]) -> tuple[list[str], list[str]]:
    """(package modules, external top-level names) one import statement reaches."""
    base = next(iter(files)).split(".")[0] if files else ""
    inside, outside = [], []
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            if name == base or name.startswith(base + "."):
                # the deepest known module of the dotted name (``import a.b.c`` runs a, a.b, a.b.c)
                parts = name.split(".")
                while parts and not _known(".".join(parts), files):
                    parts.pop()
                if parts:
                    inside.append(".".join(parts))
            else:
                outside.append(name.split(".")[0])
        return inside, outside
    # from X import names
    if node.level:
        anchor = module.split(".") if _is_package(module, files) else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
        origin = ".".join([*anchor, *(node.module.split(".") if node.module else [])])
    else:
        origin = node.module or ""
        if not (origin == base or origin.startswith(base + ".")):
            outside.append(origin.split(".")[0])
            return inside, outside
    for alias in node.names:
        sub = f"{origin}.{alias.name}"
        if alias.name != "*" and _known(sub, files):
            inside.append(sub)  # ``from . import x`` / ``from .models import loading``: the submodule
        elif _known(origin, files):
            inside.append(origin)
        else:
            # generated or absent (region_perception.msg / .srv: built by CMake, not in the tree)
            outside.append(origin)
    return sorted(set(inside)), outside


def read_imports(package_root: Path) -> list[Import]:
    """Every import of the package's modules that reaches another module of the package."""
    files = module_files(package_root)
    found: list[Import] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, late in _walk_imports(tree):
            targets, _ = _resolve(module, node, files)
            for target in targets:
                if target != module:
                    found.append(Import(module, target, node.lineno, late, ast.unparse(node)))
    return found


def _graph(package_root: Path, late: bool | None) -> dict[str, set[str]]:
    files = module_files(package_root)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for imp in read_imports(package_root):
        if late is None or imp.late == late:
            graph.setdefault(imp.source, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    return graph


def module_graph(package_root: Path) -> dict[str, set[str]]:
    """Module -> package modules it imports at module level (the imports that run on import)."""
    return _graph(package_root, late=False)


def late_graph(package_root: Path) -> dict[str, set[str]]:
    """Module -> package modules it imports only inside functions (late imports)."""
    return _graph(package_root, late=True)


def full_graph(package_root: Path) -> dict[str, set[str]]:
    """Module-level and late imports together: what a test of "no cycles" should read."""
    return _graph(package_root, late=None)


def external_imports(package_root: Path, *, late: bool | None = None) -> dict[str, set[str]]:
    """Module -> top-level names it imports from outside the package (``late`` as in ``_graph``)."""
    files = module_files(package_root)
    out: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, is_late in _walk_imports(tree):
            if late is None or is_late == late:
                out[module].update(_resolve(module, node, files)[1])
    return out


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a self-import), largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    nodes = set(graph) | {t for ts in graph.values() for t in ts}

    def strongconnect(root: str) -> None:  # iterative Tarjan (no recursion limit)
        nonlocal counter
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            strongconnect(node)
    return sorted(found, key=lambda c: (-len(c), c))


def cycle_edges(graph: Mapping[str, Iterable[str]], component: Iterable[str]) -> list[tuple[str, str]]:
    """The edges inside one strongly connected component (what to cut)."""
    members = set(component)
    return sorted((s, t) for s in members for t in graph.get(s, ()) if t in members)


def layer_of(module: str, layers: Mapping[str, int]) -> int | None:
    """The floor of ``module`` by the longest matching dotted prefix of ``layers`` (None: unplaced)."""
    best, best_len = None, -1
    for prefix, floor in layers.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = floor, len(prefix)
    return best


def upward_imports(graph: Mapping[str, Iterable[str]], layers: Mapping[str, int]) -> list[tuple[str, str, int, int]]:
    """``(source, target, source floor, target floor)`` for every import of a higher floor."""
    out = []
    for source in sorted(graph):
        fs = layer_of(source, layers)
        for target in sorted(graph[source]):
            ft = layer_of(target, layers)
            if fs is not None and ft is not None and ft > fs:
                out.append((source, target, fs, ft))
    return out


def unplaced(graph: Mapping[str, Iterable[str]], layers: Mapping[str, int]) -> list[str]:
    """Modules the layer table does not place (a new module must be given a floor)."""
    return sorted(m for m in graph if layer_of(m, layers) is None)


def forbidden_externals(
    externals: Mapping[str, Iterable[str]], names: Iterable[str] = ("rclpy",), allowed: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """``(module, name)`` for imports of ``names`` outside the ``allowed`` prefixes (rclpy only under ros/)."""
    names, allowed = set(names), tuple(allowed)
    return sorted(
        (m, n)
        for m, ns in externals.items()
        for n in ns
        if n in names and not any(m == a or m.startswith(a + ".") for a in allowed)
    )


def floors(graph: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Each module's floor by longest import chain below it (cycles folded into one room):
    what the tree itself says, independent of any table."""
    comps = cycles(graph)
    room = {m: m for m in graph}
    for comp in comps:
        for m in comp:
            room[m] = comp[0]
    rooms: dict[str, set[str]] = {}
    for s, ts in graph.items():
        rooms.setdefault(room[s], set())
        for t in ts:
            if room.get(t, t) != room[s]:
                rooms[room[s]].add(room.get(t, t))
    memo: dict[str, int] = {}

    def height(r: str) -> int:
        if r not in memo:
            memo[r] = 0
            memo[r] = 1 + max((height(t) for t in rooms.get(r, ())), default=-1)
        return memo[r]

    return {m: height(room[m]) for m in graph}


# ---------------------------------------------------------------------------------------------
# Layer tables (floor 0 = bottom; each floor may import only its own floor and those below)
# ---------------------------------------------------------------------------------------------

P = "region_perception"

# The layout (docs/architecture.md): the folder is the floor. Longest prefix wins.
LAYERS: dict[str, int] = {
    f"{P}": 0,  # the package __init__ (version, namespace path)
    f"{P}.common": 0,  # timing, status codes, ros_env, feature_cache: no package imports at all
    f"{P}.geometry": 1,  # regions, region_parsing, region_text, proposals, depth (pure numpy/cv2)
    f"{P}.datasets": 2,  # synthetic world, loaders, synthetic_camera
    f"{P}.models": 3,  # errors, hub, fetch, sources, registry, loading, backends, snap
    f"{P}.engine": 4,  # RegionEngine (__init__), results, config, batch, scoring, refer, conversation, vocabulary
    f"{P}.service": 5,  # query_processor, frame_buffer, depth_source, overlay, config_file, image_decoding
    f"{P}.logs": 6,
    f"{P}.cost": 6,
    f"{P}.testing": 6,
    f"{P}.tracking": 7,  # following an object: flow propagation, the track state machine, colour model
    f"{P}.evaluation": 8,
    f"{P}.training": 8,
    f"{P}.bench": 8,
    f"{P}.ros": 9,  # the ROS entry points (node, camera, query tool, benches); the only rclpy importers
    f"{P}.cli": 10,  # the command line, one module per command group; nothing else imports it
}

# The name the house plan used for the same table.
PROPOSED_LAYERS = LAYERS

#: generated by CMake (rosidl), not in the source tree: imports of them are not "unresolved"
GENERATED = (f"{P}.msg", f"{P}.srv", f"{P}.action")


def unresolved(package_root: Path, generated: Iterable[str] = GENERATED) -> list[tuple[str, int, str]]:
    """``(module, line, statement)`` for imports of a package module that does not exist.

    An old path such as ``from ..regions import BoxRegion`` fails only when that line runs (a late
    import): this finds it without running anything."""
    files = module_files(package_root)
    base = Path(package_root).resolve().name
    generated = tuple(generated)
    out = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, _ in _walk_imports(tree):
            _, outside = _resolve(module, node, files)
            for name in outside:
                if (name == base or name.startswith(base + ".")) and not any(
                    name == g or name.startswith(g + ".") for g in generated
                ):
                    out.append((module, node.lineno, ast.unparse(node)))
    return sorted(set(out))


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _short(module: str) -> str:
    return module[len(P) + 1 :] if module.startswith(P + ".") else module


def report(package_root: Path, layers: Mapping[str, int] = LAYERS, out=sys.stdout) -> int:
    """Print the report; the number of problems found (cycles, unplaced modules, upward imports,
    unresolved imports, rclpy outside ros/)."""
    imports = read_imports(package_root)
    top = module_graph(package_root)
    full = full_graph(package_root)
    problems = 0

    def say(*args: object) -> None:
        print(*args, file=out)

    lines_of: dict[tuple[str, str], list[str]] = {}
    for imp in imports:
        lines_of.setdefault((imp.source, imp.target), []).append(f"{imp.line}{'L' if imp.late else ''}")

    say(f"# import graph of {Path(package_root).resolve()}")
    n_edges = sum(len(v) for v in top.values())
    n_late = len({(i.source, i.target) for i in imports if i.late} - {(s, t) for s, ts in top.items() for t in ts})
    say(f"modules: {len(top)}   module-level edges: {n_edges}   edges only by late imports: {n_late}")
    say("(line numbers: where the import stands; 'L' = inside a function, a late import)")

    for title, graph in (("module-level imports", top), ("module-level + late imports", full)):
        comps = cycles(graph)
        say(f"\n## cycles, {title}: {len(comps)}")
        for comp in comps:
            say(f"- {len(comp)} modules: {', '.join(_short(m) for m in comp)}")
            for s, t in cycle_edges(graph, comp):
                say(f"    {_short(s)} -> {_short(t)}  (line {', '.join(lines_of.get((s, t), ['?']))})")
        if title.endswith("late imports"):
            problems += len(comps)

    say("\n## late imports (inside functions)")
    for imp in sorted((i for i in imports if i.late), key=lambda i: (i.source, i.line)):
        say(f"- {_short(imp.source)}:{imp.line} -> {_short(imp.target)}    {imp.statement}")

    say("\n## floors by the layer table (0 = bottom)")
    by_floor: dict[int | None, list[str]] = {}
    for m in sorted(full):
        by_floor.setdefault(layer_of(m, layers), []).append(_short(m) or P)
    for floor in sorted(by_floor, key=lambda f: (f is None, f if f is not None else 0)):
        say(f"- {floor if floor is not None else 'UNPLACED'}: {', '.join(by_floor[floor])}")
    missing = unplaced(full, layers)
    problems += len(missing)

    up = upward_imports(full, layers)
    problems += len(up)
    say(f"\n## upward imports (module-level + late): {len(up)}")
    for s, t, fs, ft in up:
        say(f"- {_short(s)} ({fs}) -> {_short(t)} ({ft})  line {', '.join(lines_of.get((s, t), ['?']))}")

    gone = unresolved(package_root)
    problems += len(gone)
    say(f"\n## imports of modules that do not exist (old paths): {len(gone)}")
    for m, line, statement in gone:
        say(f"- {_short(m)}:{line}    {statement}")

    ext = external_imports(package_root)
    rcl = forbidden_externals(ext, ("rclpy",), (f"{P}.ros",))
    problems += len(rcl)
    say(f"\n## rclpy outside ros/: {len(rcl)}")
    for m, n in rcl:
        say(f"- {_short(m)} imports {n}")

    height = floors(full)
    say(f"\n## floors the imports alone give (longest chain below; cycles = one room): {max(height.values()) + 1}")
    rooms = {tuple(c) for c in cycles(full)}
    say(f"rooms among the root's direct children (a cycle = one room): {_root_rooms(full)}; cycles: {len(rooms)}")

    say(f"\n## problems: {problems}")
    return problems


def _root_rooms(graph: Mapping[str, Iterable[str]]) -> int:
    """Rooms (cycle = one room) formed by the modules directly at the package root."""
    root_mods = {m for m in graph if m.count(".") == 1}
    seen, rooms = set(), 0
    for comp in cycles(graph):
        members = set(comp) & root_mods
        if members:
            rooms += 1
            seen |= members
    return rooms + len(root_mods - seen)


def main(argv: list[str] | None = None) -> int:
    default = Path(__file__).resolve().parents[1]  # region_perception/testing/layers.py -> the package
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", nargs="?", type=Path, default=default)
    args = ap.parse_args(argv)
    return 1 if report(args.package, LAYERS) else 0


if __name__ == "__main__":
    sys.exit(main())
