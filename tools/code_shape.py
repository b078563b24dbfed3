"""The code's shape, for reviews of the architecture: the longest functions (lines, by ast) and the import graph
between tuneforge's top-level modules / packages, with any cycles.

    python tools/code_shape.py [SRC_DIR] [--top 12]"""
from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path


def functions(src: Path):
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield node.end_lineno - node.lineno + 1, f"{path.relative_to(src)}:{node.name}"


def unit(module: str) -> str:
    """tuneforge.engine.loop -> engine.loop; tuneforge.run -> run (the granularity of the graph)."""
    parts = module.split(".")[1:]
    return ".".join(parts[:2]) if parts and parts[0] in ("engine",) else (parts[0] if parts else "tuneforge")


def import_graph(src: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src.parent).with_suffix("")
        me = unit(".".join(rel.parts).removesuffix(".__init__"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in ("tuneforge", "tuneforge.engine"):
                names = [f"{node.module}.{a.name}" for a in node.names]  # submodules imported by name
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("tuneforge.") and unit(name) != me:
                    graph[me].add(unit(name))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, stack, seen = [], [], set()

    def visit(node: str) -> None:
        if node in stack:
            cyc = stack[stack.index(node):]
            if sorted(cyc) not in [sorted(c) for c in found]:
                found.append(cyc)
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    return found


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("src", nargs="?", default=str(Path(__file__).resolve().parent.parent / "src" / "tuneforge"))
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()
    src = Path(a.src)
    print("longest functions (lines):")
    for n, name in sorted(functions(src), reverse=True)[:a.top]:
        print(f"  {n:4d}  {name}")
    graph = import_graph(src)
    print("imports between modules:")
    for node in sorted(graph):
        print(f"  {node} -> {', '.join(sorted(graph[node]))}")
    found = cycles(graph)
    print("cycles:", "; ".join(" -> ".join(c + [c[0]]) for c in found) if found else "none")
    packages: dict[str, set[str]] = defaultdict(set)
    for node, targets in graph.items():
        packages[node.split(".")[0]] |= {t.split(".")[0] for t in targets} - {node.split(".")[0]}
    found = cycles(packages)
    print("cycles between top-level modules/packages:",
          "; ".join(" -> ".join(c + [c[0]]) for c in found) if found else "none")


if __name__ == "__main__":
    main()
