#!/usr/bin/env python3
"""The module graph of src/ from its `crate::` paths, and any cycle in it.

A module is a file under src/ (a folder's mod.rs stands for the folder). An edge a -> b means
a names something in b. Cycles are printed and make the exit status 1; `--dot` prints the
graph for graphviz instead.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)")
SUPER = re.compile(r"\bsuper::([a-z_][a-z0-9_]*)")
GROUP = re.compile(r"\b(crate|super)::\{([^}]*)\}")


def grouped(code):
    """`crate::{a, b::c}` and `super::{x, y}` as `(root, path)` pairs."""
    for root, inner in GROUP.findall(code):
        for item in inner.split(","):
            item = item.strip().split(" as ")[0]
            if item and item[0].islower():
                yield root, item.split("::")


def modules():
    found = {}
    for root, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs") or name == "main.rs":
                continue
            rel = os.path.relpath(os.path.join(root, name), SRC)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib"):
                rel = rel[:-1]
            found["::".join(rel)] = os.path.join(root, name)
    return found


def code_of(path):
    text = open(path).read()
    # Unit tests may reach anywhere; the architecture is what the code itself uses.
    cut = text.find("#[cfg(test)]\nmod tests")
    text = text if cut < 0 else text[:cut]
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))


def resolve(known, parts):
    """The longest known module prefix of a path."""
    for n in range(len(parts), 0, -1):
        candidate = "::".join(parts[:n])
        if candidate in known:
            return candidate
    return None


def graph():
    known = modules()
    edges = {m: set() for m in known}
    for module, path in known.items():
        code = code_of(path)
        parent = module.rsplit("::", 1)[0] if "::" in module else ""
        up = parent.split("::") if parent else []
        targets = [m.split("::") for m in PATH.findall(code)]
        targets += [up + [m] for m in SUPER.findall(code)]
        for root, parts in grouped(code):
            targets.append(parts if root == "crate" else up + parts)
        for parts in targets:
            target = resolve(known, parts)
            if target and target != module and not target.startswith(module + "::") and not module.startswith(target + "::"):
                edges[module].add(target)
    return edges


def cycles(edges):
    found, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def main():
    edges = graph()
    if "--dot" in sys.argv:
        print("digraph defrost {")
        for m in sorted(edges):
            for t in sorted(edges[m]):
                print(f'  "{m}" -> "{t}";')
        print("}")
        return 0
    found = cycles(edges)
    for c in found:
        print("cycle: " + " -> ".join(c))
    print(f"{len(edges)} modules, {sum(len(v) for v in edges.values())} edges, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
