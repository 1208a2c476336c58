"""Mutation testing of the pure modules: does the test suite notice a one-line change?

For each module below, single-point mutants are made from its syntax tree (an arithmetic or
comparison operator swapped, a number nudged, a boolean flipped, a `return x` made
`return None`), each is written into a scratch copy of the repository, and the module's unit
tests run against it. A mutant is *killed* when a test fails (or the run times out), and
*survives* when every test still passes. The score per module is killed / tried.

    .venv/bin/python scripts/mutate.py                  # every module, 25 mutants each (seeded)
    .venv/bin/python scripts/mutate.py --per-module 60 policies/dualpi2.py
    .venv/bin/python scripts/mutate.py --list-survivors

The working tree is never modified. Mutants are sampled with a fixed seed, so a score moves only
when the code or the tests move. No third-party tool: the mutations are plain `ast` rewrites.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the unit tests that are its claim-holders (fast ones: no namespaces)
# The registry tests hold every built-in policy to its published defaults and targets.
REGISTRY_TESTS = ["tests/test_policies_registry.py"]
TARGETS: dict[str, list[str]] = {
    "policies/dualpi2.py": ["tests/test_policies_dualpi2.py", "tests/test_policies_dualpi2_kernel.py",
                            *REGISTRY_TESTS],
    "policies/pie.py": ["tests/test_policies_pie.py", *REGISTRY_TESTS],
    "policies/pi2.py": ["tests/test_policies_pi2.py", *REGISTRY_TESTS],
    "policies/red.py": ["tests/test_policies_red.py", *REGISTRY_TESTS],
    "policies/codel.py": ["tests/test_policies_codel.py", *REGISTRY_TESTS],
    "policies/fifo.py": ["tests/test_policies_fifo.py", *REGISTRY_TESTS],
    "policies/explore.py": ["tests/test_policies_explore.py", "tests/test_aqm_llm_data.py"],
    "policies/aqm_llm/reward.py": ["tests/test_aqm_llm_data.py", "tests/test_claims.py"],
    "policies/aqm_llm/dataset.py": ["tests/test_aqm_llm_data.py", "tests/test_aqm_llm_windows.py",
                                    "tests/test_claims.py"],
    "policies/aqm_llm/features.py": ["tests/test_aqm_llm_data.py", "tests/test_aqm_llm_windows.py"],
    "orchestrator/analysis/queue.py": ["tests/test_analysis_queue.py"],
    "orchestrator/analysis/flows.py": ["tests/test_analysis_flows.py"],
    "orchestrator/analysis/pcap.py": ["tests/test_analysis_pcap.py"],
    "orchestrator/analysis/summary.py": ["tests/test_analysis_summary.py"],
}

SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
        ast.FloorDiv: ast.Div, ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv,
        ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
        ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.And: ast.Or, ast.Or: ast.And,
        ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}


@dataclass(frozen=True)
class Mutant:
    line: int
    what: str
    index: int  # the index-th mutable site in walk order (stable for a given source)


def _sites(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """Every mutable point, in a stable order, skipping docstrings and type annotations."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None),
                                                                     ast.Constant):
                skip.add(id(body[0].value))
        for ann in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if ann is not None:
                skip.update(id(n) for n in ast.walk(ann))
    out: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in SWAP:
            out.append((node, f"{type(node.op).__name__} -> {SWAP[type(node.op)].__name__}"))
        elif isinstance(node, ast.BoolOp) and type(node.op) in SWAP:
            out.append((node, f"{type(node.op).__name__} -> {SWAP[type(node.op)].__name__}"))
        elif isinstance(node, ast.Compare) and type(node.ops[0]) in SWAP:
            out.append((node, f"{type(node.ops[0]).__name__} -> {SWAP[type(node.ops[0])].__name__}"))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float) \
                and not isinstance(node.value, bool):
            out.append((node, f"{node.value!r} -> {_nudge(node.value)!r}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            out.append((node, f"{node.value} -> {not node.value}"))
        elif isinstance(node, ast.Return) and node.value is not None \
                and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            out.append((node, "return x -> return None"))
    return out


def _nudge(v: int | float) -> int | float:
    if isinstance(v, int):
        return v + 1
    return v * 1.5 if v != 0 else 1.0


def _apply(node: ast.AST) -> None:
    if isinstance(node, (ast.BinOp, ast.AugAssign, ast.BoolOp)):
        node.op = SWAP[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops[0] = SWAP[type(node.ops[0])]()
    elif isinstance(node, ast.Constant):
        node.value = (not node.value) if isinstance(node.value, bool) else _nudge(node.value)
    elif isinstance(node, ast.Return):
        node.value = ast.Constant(None)


def mutants(source: str) -> list[Mutant]:
    return [Mutant(getattr(n, "lineno", 0), what, i) for i, (n, what) in enumerate(_sites(ast.parse(source)))]


def mutate(source: str, m: Mutant) -> str:
    tree = ast.parse(source)
    node, _ = _sites(tree)[m.index]
    _apply(node)
    return ast.unparse(ast.fix_missing_locations(tree))


def _run_tests(scratch: Path, tests: list[str], timeout: float) -> str:
    env = {**os.environ, "PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
           "--timeout", str(int(timeout)), *tests]
    try:
        res = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        return "killed (timeout)"
    if res.returncode == 0:
        return "survived"
    if res.returncode in (1, 2, 3):  # tests failed, or the mutant broke collection/import
        return "killed"
    return f"error ({res.returncode})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help="modules to mutate (default: all known)")
    ap.add_argument("--per-module", type=int, default=25, help="mutants sampled per module")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=120, help="seconds per test run")
    ap.add_argument("--list-survivors", action="store_true")
    args = ap.parse_args()
    chosen = args.modules or list(TARGETS)
    unknown = [m for m in chosen if m not in TARGETS]
    if unknown:
        print(f"error: no test mapping for {', '.join(unknown)}; known: {', '.join(TARGETS)}",
              file=sys.stderr)
        return 2
    # a TERM (a CI timeout, kill PID) unwinds through the `finally` below: no scratch copy left
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = Path(tempfile.mkdtemp(prefix="mutate-"))
    try:
        for sub in ("orchestrator", "policies", "tests"):
            shutil.copytree(ROOT / sub, scratch / sub, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", scratch / "pyproject.toml")
        total_k = total_n = 0
        t0 = time.monotonic()
        print(f"{'module':40} {'killed':>7} {'tried':>6} {'score':>6}")
        for mod in chosen:
            source = (ROOT / mod).read_text()
            pool = mutants(source)
            rng = random.Random(f"{args.seed}:{mod}")
            picked = sorted(rng.sample(pool, min(args.per_module, len(pool))), key=lambda m: m.index)
            killed, survivors = 0, []
            for m in picked:
                (scratch / mod).write_text(mutate(source, m))
                verdict = _run_tests(scratch, TARGETS[mod], args.timeout)
                killed += verdict.startswith("killed")
                if verdict.startswith("error"):
                    print(f"    {mod}: line {m.line}: test run {verdict}", file=sys.stderr)
                if verdict == "survived":
                    survivors.append(m)
            (scratch / mod).write_text(source)
            total_k, total_n = total_k + killed, total_n + len(picked)
            score = killed / len(picked) if picked else float("nan")
            print(f"{mod:40} {killed:7d} {len(picked):6d} {score:6.0%}", flush=True)
            if args.list_survivors:
                for m in survivors:
                    print(f"    survived: line {m.line}: {m.what}")
        print(f"{'total':40} {total_k:7d} {total_n:6d} {total_k / max(total_n, 1):6.0%}   "
              f"({time.monotonic() - t0:.0f} s)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
