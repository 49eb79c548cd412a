#!/usr/bin/env python3
"""Keeps the crates' shape: no source file under */src over 600 lines, no function over 80.

Prints the five longest functions, so a change that grows one shows in the CI log."""
import glob
import re
import sys

MAX_FILE, MAX_FN = 600, 80
FN = re.compile(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m or line.strip().startswith("//"):
            continue
        depth, started = 0, False
        for j in range(i, len(lines)):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
            code = re.sub(r"'(\\.|[^'\\])'", "''", code).split("//")[0]
            for ch in code:
                if ch == "{":
                    depth, started = depth + 1, True
                elif ch == "}":
                    depth -= 1
            if started and depth == 0:
                yield (j - i + 1, path, i + 1, m.group(6))
                break
            if not started and code.rstrip().endswith(";"):
                break


files = sorted(glob.glob("*/src/**/*.rs", recursive=True) + glob.glob("src/**/*.rs", recursive=True))
bad = []
for f in files:
    n = sum(1 for _ in open(f, encoding="utf-8"))
    if n > MAX_FILE:
        bad.append(f"{f}: {n} lines (at most {MAX_FILE})")
fns = sorted((x for f in files for x in functions(f)), reverse=True)
print("longest functions:")
for length, path, line, name in fns[:5]:
    print(f"  {length:4} lines  {path}:{line} {name}")
bad += [f"{p}:{l} fn {n}: {k} lines (at most {MAX_FN})" for k, p, l, n in fns if k > MAX_FN]
for b in bad:
    print(b, file=sys.stderr)
sys.exit(1 if bad else 0)
