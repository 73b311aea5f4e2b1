"""The import rule between layers (docs/architecture.md): a lower layer never imports a higher one, and
hw/ (imported as bridge.hw) imports nothing else from bridge/. Every import in every module counts, also
the lazy ones inside functions. The order, lowest first:
    bridge.hw < bridge.errors < codec < core < security < endpoints < protocols < daemon < tools < cli < top
(top: bridge.pycan, bridge.__main__; bridge.frame, the CanFrame of the API edges, is pure and counts as a
codec). A module may import its own layer and lower ones."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["bridge.hw", "bridge.errors", "bridge.codec", "bridge.core", "bridge.security", "bridge.endpoints",
          "bridge.protocols", "bridge.daemon", "bridge.tools", "bridge.cli", "top"]
TOP = ("bridge.pycan", "bridge.__main__")  # the modules at the top of the package


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


def violations() -> list[str]:
    found = []
    for top in ("bridge", "hw"):
        for path in sorted((ROOT / top).rglob("*.py")):
            module = module_name(path)
            mine = layer_of(module)
            for line, target in imports_of(path, module):
                theirs = layer_of(target)
                if theirs > mine:
                    found.append(f"{path.relative_to(ROOT)}:{line}: {module} ({LAYERS[mine]}) imports {target} "
                                 f"({LAYERS[theirs]})")
    return found


def test_no_layer_imports_a_higher_one():
    assert violations() == []


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
