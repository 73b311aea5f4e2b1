"""The import rule between layers (docs/architecture.md): a lower layer never imports a higher one, and
hw/ (imported as bridge.hw) imports nothing else from bridge/. Every import in every module counts, also
the lazy ones inside functions. The order, lowest first:
    bridge.hw < bridge.errors < codec < core < security < endpoints < protocols < daemon < tools < cli < top
(top: the bridge.pycan package, bridge.__main__; bridge.frame, the CanFrame of the API edges, is pure and
counts as a codec). A module may import its own layer and lower ones. Inside bridge/tools/ each task has a
room (TOOL_ROOMS) that may import only the rooms listed for it, and no module sits directly in bridge/tools/.
No two modules import each other, directly or round a longer circle."""

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["bridge.hw", "bridge.errors", "bridge.codec", "bridge.core", "bridge.security", "bridge.endpoints",
          "bridge.protocols", "bridge.daemon", "bridge.tools", "bridge.cli", "top"]
TOP = ("bridge.pycan", "bridge.__main__")  # the modules at the top of the package
# bridge/tools/ by what a person does (bridge/tools/__init__.py): room -> the other rooms it may import
TOOL_ROOMS = {"logs": set(), "inspect": {"logs"}, "live": {"logs"}, "rig": {"logs"}}


def layer_of(module: str) -> int:
    """Index in LAYERS of a dotted module name (the longest matching prefix). The package `bridge` itself
    (its __init__: the version) sits with bridge.errors at the bottom."""
    if module == "bridge":
        return LAYERS.index("bridge.errors")
    if module == "bridge.frame":
        return LAYERS.index("bridge.codec")
    if module in TOP or module.startswith(tuple(m + "." for m in TOP)):
        return LAYERS.index("top")
    best = -1
    for i, prefix in enumerate(LAYERS):
        if (module == prefix or module.startswith(prefix + ".")) and (best < 0 or len(prefix) > len(LAYERS[best])):
            best = i
    return best


def module_name(path: Path) -> str:
    """Dotted name of a source file; hw/X.py is bridge.hw.X (bridge/hw/__init__.py points there)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[:1] == ["hw"]:
        parts = ["bridge", *parts]
    return ".".join(parts)


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            # `from bridge import x` imports bridge.x when x is a module
            out += [(node.lineno, f"{base}.{a.name}" if (ROOT / base.replace(".", "/") / a.name).exists()
                     or (ROOT / base.replace(".", "/") / f"{a.name}.py").exists() else base) for a in node.names]
    return out


def sources():
    """(path, dotted name) of every module of the product: bridge/ and hw/."""
    for top in ("bridge", "hw"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path, module_name(path)


def tool_room(module: str) -> str | None:
    """"bridge.tools.live.dump" -> "live"; None outside bridge/tools/ and for the package itself."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["bridge", "tools"] and len(parts) > 2 else None


def violations() -> list[str]:
    found = []
    for path, module in sources():
        mine, room = layer_of(module), tool_room(module)
        for line, target in imports_of(path, module):
            theirs, other = layer_of(target), tool_room(target)
            where = f"{path.relative_to(ROOT)}:{line}: {module}"
            if theirs > mine:
                found.append(f"{where} ({LAYERS[mine]}) imports {target} ({LAYERS[theirs]})")
            elif room and other and other != room and other not in TOOL_ROOMS.get(room, set()):
                found.append(f"{where} (tools room {room}) imports {target} (tools room {other})")
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports (lazy imports too; a package's own __init__ is not an
    edge of its modules: importing bridge.tools.live.dump runs bridge/tools/live/__init__.py first, by
    Python's rule, not by our choice)."""
    known = {module for _path, module in sources()}
    return {module: {t for _line, t in imports_of(path, module) if t in known and t != module}
            for path, module in sources()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~150)
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_layer_imports_a_higher_one():
    assert violations() == []


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_the_circle_check_catches_a_circle(monkeypatch):
    """The checker itself: the circle issue 19 removed (dump <-> mqtt_source), put back, is reported."""
    graph = import_graph()
    graph["bridge.tools.live.source"] = graph["bridge.tools.live.source"] | {"bridge.tools.live.opener"}
    assert any("bridge.tools.live.opener" in c and "bridge.tools.live.source" in c for c in circles(graph))


def test_tools_hold_rooms_only():
    """Every module of bridge/tools/ lives in a room of TOOL_ROOMS (no module directly in bridge/tools/ but
    its __init__), and every room says in its __init__ docstring what it is for."""
    tools = ROOT / "bridge" / "tools"
    assert sorted(p.name for p in tools.glob("*.py")) == ["__init__.py"]
    rooms = sorted(p.name for p in tools.iterdir() if (p / "__init__.py").exists())
    assert rooms == sorted(TOOL_ROOMS)
    for room in rooms:
        assert ast.get_docstring(ast.parse((tools / room / "__init__.py").read_text())), room


def test_the_check_catches_a_crossing_between_tool_rooms(monkeypatch):
    """The checker itself: the probe (logs) importing the local source (live) is reported."""
    fake = ROOT / "bridge" / "tools" / "logs" / "probe.py"
    text = fake.read_text() + "\nfrom bridge.tools.live import local\n"
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: text if self == fake else real(self, *a, **k))
    assert any("(tools room logs) imports bridge.tools.live.local (tools room live)" in v for v in violations())


def test_hw_is_imported_as_bridge_hw_only():
    """`import hw.x` would load a second copy of a module beside bridge.hw.x (two ConfigError classes, two
    registries of state), and an installed wheel has no top-level hw at all."""
    stray = []
    for top in ("bridge", "hw", "tests", "benchmarks", "fuzz"):
        for path in sorted((ROOT / top).rglob("*.py")):
            stray += [f"{path.relative_to(ROOT)}:{line}: {target}"
                      for line, target in imports_of(path, module_name(path)) if target.split(".")[0] == "hw"]
    assert stray == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a codec importing the reactor, and hw importing bridge, are reported."""
    assert layer_of("bridge.codec.native") < layer_of("bridge.core.reactor") < layer_of("bridge.cli.main")
    assert layer_of("bridge.hw.links") < layer_of("bridge.errors") < layer_of("bridge.pycan")
    fake = ROOT / "bridge" / "codec" / "native.py"
    text = fake.read_text() + "\nfrom bridge.core.reactor import Reactor\n"
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: text if self == fake else real(self, *a, **k))
    assert any("bridge.codec.native (bridge.codec) imports bridge.core.reactor" in v for v in violations())


def test_codecs_are_pure():
    """Sans-IO (docs/architecture.md): no codec imports sockets, selectors, clocks, logging or asyncio."""
    io = {"socket", "select", "selectors", "time", "logging", "asyncio"}
    impure = []
    for path in sorted((ROOT / "bridge" / "codec").glob("*.py")):
        names = {target.split(".")[0] for _line, target in imports_of(path, module_name(path))}
        impure += [f"{path.name}: {name}" for name in sorted(names & io)]
    assert impure == []
