#!/usr/bin/env python3
"""Checks the shape docs/architecture.md promises, for every crate under crates/:

* no import cycle among a crate's top-level modules (a module's `crate::x` paths, outside
  its `#[cfg(test)]` code, are its imports);
* in `levee`, every import points down the layers of docs/architecture.md (LAYERS below):
  to a lower layer, or inside a layer along one of the arrows drawn there (SIDEWAYS), and
  every module has a layer;
* no source file over 800 lines.

Function length is clippy's `too_many_lines` (clippy.toml). Usage:
    scripts/check_layers.py [--graph]
Exits 1 and names each cycle (with one import line per edge) or long file it finds;
--graph prints every module's imports."""

import pathlib
import re
import sys

MAX_FILE_LINES = 800
ROOT = pathlib.Path(__file__).resolve().parent.parent

# The layers of the `levee` crate, bottom (0) to top, as drawn in docs/architecture.md.
LAYERS = {
    "levee": [
        ["headers", "hex", "host", "outbound", "strict", "admission", "restart", "admin_client", "grpc", "client_body"],
        ["config"],
        ["observability"],
        ["cluster"],
        ["auth", "jwt", "chaos", "slo", "router", "ratelimit", "upstream", "stale", "tls", "guardrails"],
        ["body", "record"],
        ["llm", "mcp"],
        ["management"],
        ["gateway", "edge"],
        ["state"],
        ["pipeline", "reload", "supervisor"],
        ["admin"],
        ["server"],
        ["demo", "fuzzing"],
    ],
}
# Imports allowed inside a layer (the arrows drawn within it).
SIDEWAYS = {
    "levee": {("headers", "hex"), ("auth", "jwt"), ("chaos", "slo"), ("body", "record"), ("upstream", "tls"), ("mcp", "llm")}
}


def layer_problems(crate, graph):
    """Imports that point up or sideways without an arrow, and modules with no layer."""
    layers = LAYERS.get(crate)
    if layers is None:
        return []
    level = {module: i for i, names in enumerate(layers) for module in names}
    problems = [
        f"module {crate}::{m} has no layer: add it to LAYERS in scripts/check_layers.py and to docs/architecture.md"
        for m in sorted(graph)
        if m not in level
    ]
    for source in sorted(graph):
        for target, line in sorted(graph[source].items()):
            if source not in level or target not in level:
                continue
            up = level[target] > level[source]
            sideways = level[target] == level[source] and (source, target) not in SIDEWAYS.get(crate, set())
            if up or sideways:
                problems.append(
                    f"{crate}: {source} (layer {level[source]}) imports {target} (layer {level[target]}), "
                    f"which is not below it\n    {line}"
                )
    return problems


def production_code(text):
    """The text without `#[cfg(test)]` items (test modules may import anything)."""
    out, skip_depth, depth, pending = [], None, 0, False
    for line in text.splitlines():
        stripped = line.strip()
        if skip_depth is None and stripped.startswith("#[cfg(test)]"):
            pending = True
            continue
        if pending and skip_depth is None:
            if "{" in line:
                skip_depth = depth
            elif stripped.endswith(";"):
                pending = False
                continue
        opened, closed = line.count("{"), line.count("}")
        if skip_depth is not None:
            depth += opened - closed
            if depth <= skip_depth:
                skip_depth, pending = None, False
            continue
        depth += opened - closed
        out.append(line)
    return "\n".join(out)


def imports(code):
    """Top-level module names a piece of code reaches through `crate::`, with a line each.
    Doc links count too: a module's docs should not point up the layers either."""
    found = {}
    for number, line in enumerate(code.splitlines(), 1):
        for name in re.findall(r"\bcrate::(\w+)", line):
            found.setdefault(name, line.strip())
        # `use crate::{a, b::c}`: the names right inside the braces.
        for group in re.findall(r"\bcrate::\{([^}]*)", line):
            for part in group.split(","):
                name = part.strip().split("::")[0]
                if re.fullmatch(r"\w+", name):
                    found.setdefault(name, line.strip())
    # Multi-line `use crate::{ ... };` blocks.
    for block in re.findall(r"use crate::\{(.*?)\};", code, re.S):
        for name in re.findall(r"(?:^|[,{\s])(\w+)(?=::|\s*[,}]|\s*$)", block):
            found.setdefault(name, f"use crate::{{... {name} ...}}")
    return found


def strongly_connected(graph):
    """Tarjan's algorithm; returns the components with more than one module."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10_000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def main():
    show = "--graph" in sys.argv
    problems = []
    for src in sorted(ROOT.glob("crates/*/src")):
        crate = src.parent.name
        graph = {}
        for path in sorted(src.rglob("*.rs")):
            text = path.read_text(errors="replace")
            lines = text.count("\n")
            if lines > MAX_FILE_LINES:
                problems.append(f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_FILE_LINES})")
            parts = path.relative_to(src).parts
            if parts[0] in ("lib.rs", "main.rs", "bin"):
                continue
            module = parts[0].removesuffix(".rs")
            edges = graph.setdefault(module, {})
            for name, line in imports(production_code(text)).items():
                if name != module:
                    edges.setdefault(name, f"{path.relative_to(ROOT)}: {line}")
        modules = set(graph)
        for module in graph:
            graph[module] = {k: v for k, v in graph[module].items() if k in modules}
        if show:
            for module in sorted(graph):
                print(f"{crate}::{module} -> {', '.join(sorted(graph[module])) or '(nothing)'}")
        problems.extend(layer_problems(crate, graph))
        for component in strongly_connected(graph):
            members = set(component)
            detail = [
                f"    {a} -> {b}: {graph[a][b]}"
                for a in component
                for b in sorted(graph[a])
                if b in members
            ]
            problems.append(f"import cycle in {crate}: {' <-> '.join(component)}\n" + "\n".join(detail))
    for problem in problems:
        print(problem)
    print(f"check_layers: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
