"""The package's shape, checked with the standard library's `ast`: imports run one way (no
circle between modules, function-level imports included), `policies/` stands alone, no module
grows past 400 lines, and no two classes share a name (a reader must know which one is meant).
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "policies")
MAX_LINES = 400


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, anywhere in the file (also inside functions).
    `from a import b` counts as importing `a.b` when that is a module, else `a`."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a name inside a.b
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    # importing a.b.c runs a/__init__ and a/b/__init__ first: those count too, but not the
    # importer's own packages (they are being imported already when it runs)
    for t in list(out):
        parts = t.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in known and parent != name and not name.startswith(parent + "."):
                out.add(parent)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    # a package's __init__ importing its own submodules is not a circle of files that matters
    # here; everything else is
    assert cycles(graph()) == []


def test_policies_import_nothing_from_orchestrator() -> None:
    bad = {m: sorted(t for t in ts if t.split(".")[0] == "orchestrator")
           for m, ts in graph().items() if m.split(".")[0] == "policies"}
    assert {m: ts for m, ts in bad.items() if ts} == {}


def test_no_module_over_400_lines() -> None:
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_two_classes_share_a_name() -> None:
    names: Counter[str] = Counter()
    where: dict[str, list[str]] = {}
    for m, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                names[node.name] += 1
                where.setdefault(node.name, []).append(m)
    assert {n: where[n] for n, c in names.items() if c > 1} == {}


def test_the_checks_catch_what_they_check(tmp_path: Path) -> None:
    """Each check fails on a small package that breaks it (so a green run means something)."""
    pkg = tmp_path / "orchestrator"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "policies").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from orchestrator.sub import b\nclass Run: pass\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from orchestrator import a\n")
    (tmp_path / "policies" / "__init__.py").write_text("from ..orchestrator import a\nclass Run: pass\n")
    g = graph(tmp_path)
    assert cycles(g) == [["orchestrator.a", "orchestrator.sub.b"]]
    assert "orchestrator.a" in g["policies"]
