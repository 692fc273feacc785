#!/usr/bin/env python3
"""Fails when modules of the crate depend on each other in a cycle.

The crate's modules form a tree (src/lib.rs, then one file or folder per module). A reference
from a file to another module, through `use crate::…`, `use super::…`, or a path written in the
code (`crate::observe::…`), is an edge between the two sibling modules that contain them under
their nearest common ancestor: `crate::pipeline::dispatch` using `crate::observe` makes
`pipeline -> observe` at the top, and `crate::pipeline::worker` using `super::output` makes
`worker -> output` inside `pipeline`. A module using its own parent or child is not an edge:
a parent re-exports and wires its children. At every level the siblings must form a DAG; every
cycle found is printed with one reference of each edge (file:line) and the script exits 1.

Usage: scripts/module-cycles.py [SRC_DIR]   (default: src)
"""
import os
import re
import sys
from collections import defaultdict

SRC = sys.argv[1] if len(sys.argv) > 1 else "src"
ROOTS = {"lib.rs"}  # main.rs is the binary: it uses the library from outside
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(rel):
    """The module path of a file, as a tuple: src/pipeline/mod.rs -> ("pipeline",)."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def files():
    """The library's files: lib.rs and every file its `mod` declarations reach (the binary's
    main.rs and its own modules are outside)."""
    todo, seen = ["lib.rs"], set()
    while todo:
        rel = todo.pop()
        if rel in seen or not os.path.exists(os.path.join(SRC, rel)):
            continue
        seen.add(rel)
        yield rel
        text = strip_comments(open(os.path.join(SRC, rel), encoding="utf-8").read())
        here = os.path.dirname(rel)
        if os.path.basename(rel) not in ("lib.rs", "mod.rs"):
            here = os.path.join(here, os.path.basename(rel)[:-3])
        for name in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", text, re.M):
            for candidate in (os.path.join(here, name + ".rs"), os.path.join(here, name, "mod.rs")):
                if os.path.exists(os.path.join(SRC, candidate)):
                    todo.append(candidate)


def strip_comments(text):
    """The code without comments, string and character literals (newlines kept, so line numbers
    hold): a path in a doc comment or a message is not a dependency."""
    out, i, n = [], 0, len(text)
    while i < n:
        two = text[i : i + 2]
        if two == "//":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif two == "/*":
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif (m := re.match(r'b?r(#*)"', text[i:])) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            close = '"' + m.group(1)
            j = text.find(close, i + m.end())
            j = n if j < 0 else j + len(close)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif (m := re.match(r"'(?:\\.[^']*|[^'\\])'", text[i:])):
            out.append("' '")
            i += m.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def expand_use(tree):
    """Paths of a use tree: `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, s):
        depth, start, items = 0, 0, []
        for i, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(s[start:i])
                start = i + 1
        items.append(s[start:])
        for item in items:
            if not item:
                continue
            brace = item.find("{")
            if brace >= 0 and item.endswith("}"):
                walk(prefix + item[:brace], item[brace + 1 : -1])
            else:
                out.append(prefix + item.split(" as ")[0])

    walk("", tree)
    return out


def resolve(path, here, is_dir_module, modules):
    """The module a path points into, or None when it leaves the crate."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    base = None
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("super", "self"):
        # `self` in a mod.rs is the folder's module; in a leaf file it is the file's module.
        base = here
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    target = base
    for seg in segs:
        if target + (seg,) in modules:
            target = target + (seg,)
        else:
            break
    return target


def main():
    modules = {}
    for rel in files():
        modules[module_of(rel)] = rel
    edges = defaultdict(list)  # (parent, a, b) -> [where]
    path_re = re.compile(r"\b(?:crate|super|self)(?:::" + IDENT + r")+")
    use_re = re.compile(r"\buse\s+((?:crate|super|self)::[^;]*);", re.S)
    for mod, rel in modules.items():
        text = strip_comments(open(os.path.join(SRC, rel), encoding="utf-8").read())
        refs = []
        for m in use_re.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            refs += [(p, line) for p in expand_use(m.group(1))]
        no_uses = use_re.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for m in path_re.finditer(no_uses):
            refs.append((m.group(0), no_uses.count("\n", 0, m.start()) + 1))
        for path, line in refs:
            target = resolve(path, mod, rel.endswith("mod.rs"), modules)
            if target is None or target == mod:
                continue
            common = 0
            while common < min(len(mod), len(target)) and mod[common] == target[common]:
                common += 1
            if common == len(mod) or common == len(target):
                continue  # parent and child
            parent = mod[:common]
            edges[(parent, mod[common], target[common])].append(f"{os.path.join(SRC, rel)}:{line} {path}")
    graph = defaultdict(lambda: defaultdict(list))
    for (parent, a, b), where in edges.items():
        graph[parent][a] = graph[parent][a]
        graph[parent][a].append((b, where[0]))
    cycles = []
    for parent, adjacency in sorted(graph.items()):
        # Tarjan's strongly connected components.
        index, low, stack, on, counter, sccs = {}, {}, [], set(), [0], []

        def strong(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w, _ in adjacency.get(v, []):
                if w not in index:
                    strong(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                scc = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    scc.append(w)
                    if w == v:
                        break
                if len(scc) > 1:
                    sccs.append(sorted(scc))

        for v in sorted(adjacency):
            if v not in index:
                strong(v)
        for scc in sccs:
            cycles.append((parent, scc, adjacency))
    if not cycles:
        print(f"module-cycles: no cycle among {len(modules)} modules")
        return 0
    for parent, scc, adjacency in cycles:
        where = "crate" if not parent else "crate::" + "::".join(parent)
        print(f"error: modules of {where} depend on each other in a cycle: {', '.join(scc)}")
        members = set(scc)
        for a in scc:
            seen = set()
            for b, ref in adjacency.get(a, []):
                if b in members and b not in seen:
                    seen.add(b)
                    print(f"  {a} -> {b}   ({ref})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
