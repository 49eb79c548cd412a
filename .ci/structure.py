#!/usr/bin/env python3
"""The shape of each crate, measured from its source: how many `feature = "redis"` gates sit
outside its `redis` module, and which files import each other in a circle.

    python3 .ci/structure.py            # every crate
    python3 .ci/structure.py limiter    # one

A file's imports are the `crate::…` and `super::…` paths it names (in `use` lines and in
code), resolved to the file of the longest module they name. Containment is not an import:
a module naming its own submodule or parent draws no arrow (that is how a folder holds its
files). A circle is a set of two or more files each reachable from every other.

It also counts the lines of `reqwest/src/cache` that coalesce or serve stale on their own
instead of through the `TieredCache` (flight maps and channels, freshness and stale-window
arithmetic): `OWN_CACHE_STATE` lists what such a line names.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["core", "resilience", "limiter", "cache", "idempotency", "reqwest"]
IDENT = r"[a-z_][a-z0-9_]*"
OWN_CACHE_STATE = re.compile(
    r"watch::|Notify|HashMap|HashSet|Mutex|flight|refreshing|is_fresh|may_serve"
    r"|fresh_ms|swr_ms|sie_ms|soft_at|hard_at|keep_until"
)


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("lib", "mod"):
        rel = rel[:-1]
    return tuple(rel)


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def expand_braces(text):
    """`crate::a::{b::X, c}` → `crate::a::b::X crate::a::c` (one level is enough here)."""
    out = []
    for m in re.finditer(r"((?:crate|super|self)(?:::" + IDENT + r")*)::\{([^{}]*)\}", text):
        for part in m.group(2).split(","):
            part = part.strip()
            if part:
                out.append(m.group(1) + "::" + part)
    return out


def references(text, here):
    text = strip_comments(text)
    paths = re.findall(r"\b(?:crate|super)(?:::" + IDENT + r")+", text)
    paths += expand_braces(text)
    mods = []
    for p in paths:
        segs = p.split("::")
        base = list(here)
        if segs[0] == "crate":
            base, segs = [], segs[1:]
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
        while segs and segs[0] == "self":
            segs = segs[1:]
        mods.append(tuple(base) + tuple(s for s in segs if re.fullmatch(IDENT, s)))
    return mods


def circles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def measure(crate):
    src = os.path.join(ROOT, crate, "src")
    files = {}
    for d, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(d, n)
                files[module_of(src, p)] = p
    graph, gates = {}, 0
    for mod, path in files.items():
        text = open(path, encoding="utf-8").read()
        if "redis" not in mod:
            gates += text.count('feature = "redis"')
        edges = set()
        for ref in references(text, mod):
            target = next(
                (ref[:n] for n in range(len(ref), -1, -1) if ref[:n] in files), None
            )
            if target is None or target == mod:
                continue
            related = target[: len(mod)] == mod or mod[: len(target)] == target
            if not related:
                edges.add(target)
        graph[mod] = edges
    name = lambda m: os.path.relpath(files[m], ROOT)
    return gates, [[name(m) for m in c] for c in circles(graph)]


def own_cache_state():
    """Lines of reqwest/src/cache (comments aside) naming coalescing or freshness state."""
    src = os.path.join(ROOT, "reqwest", "src", "cache")
    count = 0
    for d, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                text = strip_comments(open(os.path.join(d, n), encoding="utf-8").read())
                count += sum(1 for line in text.splitlines() if OWN_CACHE_STATE.search(line))
    return count


def main():
    crates = sys.argv[1:] or CRATES
    for crate in crates:
        gates, found = measure(crate)
        print(f"{crate}: {gates} `feature = \"redis\"` outside redis/, {len(found)} import circle(s)")
        for c in found:
            print("  circle: " + " <-> ".join(c))
    if "reqwest" in crates:
        print(f"reqwest/src/cache: {own_cache_state()} line(s) that coalesce or serve stale on their own")


if __name__ == "__main__":
    main()
