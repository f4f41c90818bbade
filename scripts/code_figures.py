#!/usr/bin/env python3
"""Print code-health figures for this Rust workspace (run from the repo root).

Figures:
  1. functions longer than 70 lines in non-test code (path:line name lines);
  2. files longer than 800 lines (every *.rs outside target/);
  3. assert!-family vs debug_assert!-family macro uses per crate, non-test code;
  4. import cycles between top-level modules of each crate;
  5. lines of non-test code per crate (physical lines, and non-blank code lines).

Non-test code: *.rs under <crate>/src/ and src/, minus files named tests.rs,
files under a tests/ directory, and `#[cfg(test)] mod x { ... }` blocks
(also `#[cfg(all(test, ..))]`, which is test-only too).

Heuristics, not a parser: each file is first "cleaned" by a small tokenizer
that blanks comments (//, nested /* */) and turns the inside of string and
char literals ("..", b"..", r#".."#, '{', '\\u{7f}') into `_`, keeping
newlines, so braces in them do not count; 'a is taken as a lifetime. A
function starts at `fn name` (any pub/async/const/unsafe/extern prefix) and
runs to the `}` that balances its body's `{`; a `;` before the body (outside
parens/brackets) means a bodiless declaration. A `fn` inside a function body
belongs to the outer function. Module edge A -> B: file of module A mentions
`crate::B` (or `crate::{B, ..}`) where B is a top-level module file/dir.
"""
import os
import re
from collections import defaultdict

CRATES = ["proto", "store", "raft", "broker", "namesrv", "client", "sim", "jepsen"]
FN_LIMIT, FILE_LIMIT = 70, 800
SKIP_DIRS = {"target", ".git"}


def clean(src):
    """Blank comments and literal contents, preserving line structure."""
    out, i, n = [], 0, len(src)
    blank = lambda s, ch: "".join(c if c == "\n" else ch for c in s)
    while i < n:
        c, nxt = src[i], src[i + 1:i + 2]
        prev = src[i - 1] if i else " "
        if c == "/" and nxt == "/":
            j = n if (j := src.find("\n", i)) < 0 else j
            out.append(blank(src[i:j], " ")); i = j
        elif c == "/" and nxt == "*":
            j, depth = i + 2, 1
            while j < n and depth:
                if src.startswith("/*", j): depth += 1; j += 2
                elif src.startswith("*/", j): depth -= 1; j += 2
                else: j += 1
            out.append(blank(src[i:j], " ")); i = j
        elif c in "rb" and not (prev.isalnum() or prev == "_") and \
                (m := re.match(r'b?r(#*)"', src[i:i + 260])):
            close = n if (close := src.find('"' + m.group(1), i + m.end())) < 0 else close
            out.append(m.group(0) + blank(src[i + m.end():close], "_") + '"' + m.group(1))
            i = close + 1 + len(m.group(1))
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('"' + blank(src[i + 1:j], "_") + '"'); i = j + 1
        elif c == "'" and (nxt == "\\" or src[i + 2:i + 3] == "'"):
            j = src.find("'", i + 3) if nxt == "\\" else i + 2  # closing quote
            out.append("'" + blank(src[i + 1:j], "_") + "'"); i = j + 1
        else:
            out.append(c); i += 1
    return "".join(out)


def match_brace(text, open_pos):
    depth = 0
    for k in range(open_pos, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0: return k
    return len(text) - 1


TEST_MOD = re.compile(r"#\[cfg\((?:test|all\((?:[^\]]*,\s*)?test\s*(?:,[^\]]*)?\))\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")


def strip_test_mods(text):
    """Blank `#[cfg(test)] mod x { .. }` blocks; return (text, lines removed)."""
    removed = 0
    while (m := TEST_MOD.search(text)):
        end = match_brace(text, m.end() - 1)
        chunk = text[m.start():end + 1]
        removed += chunk.count("\n") + 1
        text = text[:m.start()] + "".join(c if c == "\n" else " " for c in chunk) + text[end + 1:]
    return text, removed


TOKEN = re.compile(r"\bfn\s+(\w+)|[{}()\[\];]")


def functions(text):
    """Yield (line, name, length) of outermost functions in cleaned text."""
    line_of = lambda pos: text.count("\n", 0, pos) + 1
    depth, parens, pending, body = 0, 0, None, None
    for m in TOKEN.finditer(text):
        tok = m.group(0)
        if m.group(1):
            if body is None: pending, parens = (m.group(1), m.start()), 0
        elif tok in "([": parens += 1
        elif tok in ")]": parens -= 1
        elif tok == ";":
            if pending and parens <= 0: pending = None
        elif tok == "{":
            depth += 1
            if pending and parens <= 0:
                body, pending = (pending, depth), None
        elif tok == "}":
            if body and depth == body[1]:
                (name, start), _ = body
                first, last = line_of(start), line_of(m.start())
                yield first, name, last - first + 1
                body = None
            depth -= 1


def rust_files(root="."):
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for f in sorted(files):
            if f.endswith(".rs"):
                yield os.path.relpath(os.path.join(dirpath, f), root)


def non_test_crate(path):
    """Crate name ('cli' for src/) if path is non-test code, else None."""
    parts = path.split(os.sep)
    if parts[-1] == "tests.rs" or "tests" in parts[:-1]:
        return None
    if parts[0] == "src":
        return "cli"
    return parts[0] if parts[0] in CRATES and parts[1:2] == ["src"] else None


def module_of(path):
    """Top-level module of a non-test file (None for the lib.rs/main.rs root)."""
    rel = path.split(os.sep)[1 if path.startswith("src" + os.sep) else 2:]
    return None if rel in (["lib.rs"], ["main.rs"]) else rel[0].removesuffix(".rs")


def crate_refs(text):
    """First path segments after `crate::`, including each item of `crate::{a, b::c}`."""
    for m in re.finditer(r"\bcrate::(\w+|\{)", text):
        if m.group(1) != "{":
            yield m.group(1)
            continue
        group = text[m.end():match_brace(text, m.end() - 1)]
        while re.search(r"\{[^{}]*\}", group):  # drop nested groups
            group = re.sub(r"\{[^{}]*\}", "", group)
        yield from re.findall(r"(?:^|,)\s*(\w+)", group)


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    def visit(v):
        index[v] = low[v] = len(index); stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:  # v roots a component: pop it off the stack
            comp = stack[stack.index(v):]
            del stack[stack.index(v):]
            on.difference_update(comp)
            out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index: visit(v)
    return out


def main():
    long_fns, long_files, graphs = [], [], defaultdict(lambda: defaultdict(set))
    asserts, loc = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    for path in rust_files():
        src = open(path, encoding="utf-8", errors="replace").read()
        nlines = len(src.splitlines())
        long_files += [(nlines, path)] if nlines > FILE_LIMIT else []
        if (crate := non_test_crate(path)) is None:
            continue
        text, removed = strip_test_mods(clean(src))
        loc[crate][0] += nlines - removed
        loc[crate][1] += sum(1 for l in text.splitlines() if l.strip())
        long_fns += [(n, path, line, name) for line, name, n in functions(text) if n > FN_LIMIT]
        for m in re.finditer(r"\b(debug_)?assert\w*!", text):
            asserts[crate][1 if m.group(1) else 0] += 1
        if (mod := module_of(path)):
            graphs[crate][mod].update(crate_refs(text))

    crates = CRATES + ["cli"]
    fns = sorted(long_fns, key=lambda f: (-f[0], f[1], f[2]))
    section(f"1. functions > {FN_LIMIT} lines (non-test code)",
            [f"{p}:{line} {name} {n}" for n, p, line, name in fns])
    section(f"2. files > {FILE_LIMIT} lines (all *.rs)",
            [f"{p} {n}" for n, p in sorted(long_files, key=lambda f: (-f[0], f[1]))])
    section("3. assert macros per crate (non-test code)",
            table(("assert", "debug_assert"), crates, asserts), count=False)
    cycles = []
    for crate in crates:
        mods = graphs[crate]
        graph = {m: sorted(t for t in mods[m] if t in mods and t != m) for m in list(mods)}
        cycles += [f"{crate}: {' <-> '.join(c)}" for c in sccs(graph) if len(c) > 1]
    section("4. import cycles between top-level modules (crate::X)", cycles)
    section("5. lines of non-test code per crate (physical / non-blank, non-comment)",
            table(("lines", "code"), crates, loc), count=False)


def section(title, rows, count=True):
    print(f"== {title}", *rows, sep="\n")
    print(f"count: {len(rows)}\n" if count else "")


def table(cols, crates, data):
    fmt = lambda name, vals: f"{name:<8}" + "".join(f"{v:>{len(c) + 2}}" for c, v in zip(cols, vals))
    totals = [sum(data[c][k] for c in crates) for k in range(len(cols))]
    return [fmt("crate", cols)] + [fmt(c, data[c]) for c in crates] + [fmt("total", totals)]


if __name__ == "__main__":
    main()
