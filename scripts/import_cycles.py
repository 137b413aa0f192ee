#!/usr/bin/env python3
"""Finds import circles between kokichi's source files: Rust modules (`src/`, `kernels/`) and
the training pipeline's Python modules (`training/`).

A Rust file depends on another when it names an item defined there, through `use` or a
`crate::` path, following `pub use` re-exports to where the item is defined. A module's own
children and ancestors are not counted (a `mod.rs` declares its children, and a child may use
what its parent defines). Test modules (from `#[cfg(test)]` on) are left out. Prints the edges
with `--edges`; exits 1 and names each circle if there is one.
"""
import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rust_modules() -> dict:
    """Module path (tuple) -> file, for the crate's library and its `kernels` module."""
    mods = {(): ROOT / "src" / "lib.rs"}
    for base, prefix in ((ROOT / "src", ()), (ROOT / "kernels", ("kernels",))):
        for f in sorted(base.rglob("*.rs")):
            rel = f.relative_to(base).with_suffix("")
            parts = list(rel.parts)
            if base.name == "src" and parts[0] in ("lib", "main", "cmd"):
                continue
            if parts[-1] == "mod":
                parts = parts[:-1]
            mods[prefix + tuple(parts)] = f
    return mods


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    return text


def use_trees(text: str):
    """The paths named by `use` statements, with the statement's visibility."""
    for m in re.finditer(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text):
        tree = re.sub(r"\s*([:,{}])\s*", r"\1", re.sub(r"\s+", " ", m.group(2).strip()))
        for path, alias in expand(tree):
            yield bool(m.group(1)), path, alias


def expand(tree: str):
    """`a::{b,c::{d,e}}` -> [a::b, a::c::d, a::c::e] as segment lists, with the bound name."""
    if "{" not in tree:
        path, _, alias = tree.partition(" as ")
        segs = path.split("::")
        return [(segs, alias or segs[-1])]
    head, rest = tree.split("{", 1)
    inner = rest[: rest.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    prefix = [s for s in head.split("::") if s]
    for p in parts:
        if not p:
            continue
        for segs, alias in expand(p):
            if segs == ["self"]:
                out.append((prefix, prefix[-1]))
            else:
                out.append((prefix + segs, alias))
    return out


def absolute(segs: list, here: tuple, mods: dict):
    if not segs:
        return None
    if segs[0] == "crate":
        return tuple(segs[1:])
    if segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
        return tuple(base + segs)
    if here + (segs[0],) in mods:
        return here + tuple(segs)
    return None  # an external crate


def analyse_rust() -> dict:
    mods = rust_modules()
    texts = {}
    for mod, f in mods.items():
        text = strip_comments(f.read_text())
        cut = text.find("#[cfg(test)]")
        texts[mod] = text if cut < 0 else text[:cut]
    # Re-exports: (module, name) -> absolute path of what it names.
    reexports = {}
    for mod, text in texts.items():
        for public, segs, alias in use_trees(text):
            path = absolute(segs, mod, mods)
            if public and path is not None:
                reexports[(mod, alias)] = path

    def resolve(path: tuple, seen=()):
        for n in range(len(path), -1, -1):
            if path[:n] in mods:
                mod, rest = path[:n], path[n:]
                if rest and (mod, rest[0]) in reexports and (mod, rest[0]) not in seen:
                    return resolve(reexports[(mod, rest[0])] + rest[1:], seen + ((mod, rest[0]),))
                return mod
        return None

    edges = {m: set() for m in mods}
    for mod, text in texts.items():
        paths = [absolute(segs, mod, mods) for _, segs, _ in use_trees(text)]
        inline = re.finditer(r"(?<![\w:])((?:[a-z_][a-z_0-9]*::)+[A-Za-z_][A-Za-z_0-9]*)", text)
        paths += [absolute(m.group(1).split("::"), mod, mods) for m in inline]
        for path in paths:
            if path is None:
                continue
            target = resolve(path)
            if target is None or target == mod:
                continue
            related = target[: len(mod)] == mod or mod[: len(target)] == target
            if not related:
                edges[mod].add(target)
    return {"::".join(("crate",) + k): {"::".join(("crate",) + t) for t in v} for k, v in edges.items()}


def analyse_python() -> dict:
    folder = ROOT / "training"
    if not folder.is_dir():
        return {}
    names = {f.stem for f in folder.glob("*.py")}
    edges = {}
    for f in sorted(folder.glob("*.py")):
        text = f.read_text()
        found = set(re.findall(r"^\s*from\s+([A-Za-z_][A-Za-z0-9_]*)\s+import", text, re.M))
        for m in re.finditer(r"^\s*import\s+([A-Za-z0-9_,\s]+)$", text, re.M):
            found |= {n.strip().split(" ")[0] for n in m.group(1).split(",")}
        edges[f"training/{f.stem}"] = {f"training/{n}" for n in found & names if n != f.stem}
    return edges


def cycles(edges: dict) -> list:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edges", action="store_true", help="print every dependency edge")
    args = ap.parse_args()
    edges = {**analyse_rust(), **analyse_python()}
    if args.edges:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{a} -> {b}")
    found = cycles(edges)
    for c in found:
        print("import circle: " + " <-> ".join(c))
    if not found:
        print(f"no import circles among {len(edges)} modules")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
