#!/usr/bin/env python3
"""Print a short map of a repository: languages, largest files, tests, entry points."""

from __future__ import annotations

import os
import sys
from collections import Counter

SKIP_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__", ".skills", ".mypy_cache"}
ENTRY_NAMES = {
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "requirements.txt",
    "package.json",
    "Makefile",
    "Cargo.toml",
    "go.mod",
    "Dockerfile",
    "main.py",
    "__main__.py",
    "manage.py",
    "README.md",
}


def is_test(rel: str) -> bool:
    name = os.path.basename(rel)
    parts = rel.split(os.sep)
    return (
        name.startswith("test_")
        or name.endswith(("_test.py", "_test.go", ".test.js", ".test.ts", ".spec.ts"))
        or any(p in ("tests", "test", "__tests__") for p in parts[:-1])
    )


def main(root: str) -> int:
    files: list[tuple[str, int, int]] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(names):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            files.append((rel, len(data), data.count(b"\n")))
    if not files:
        print(f"no files under {root}")
        return 0
    counts: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    for rel, _size, n in files:
        ext = os.path.splitext(rel)[1] or "(none)"
        counts[ext] += 1
        lines[ext] += n
    print(f"{len(files)} files under {root}")
    print("\nby extension (files, lines):")
    for ext, n in counts.most_common(12):
        print(f"  {ext:10} {n:6} {lines[ext]:8}")
    print("\nlargest files (bytes):")
    for rel, size, _n in sorted(files, key=lambda f: (-f[1], f[0]))[:10]:
        print(f"  {size:9}  {rel}")
    tests = [rel for rel, _s, _n in files if is_test(rel)]
    print(f"\ntests: {len(tests)} files")
    for rel in tests[:15]:
        print(f"  {rel}")
    entries = [rel for rel, _s, _n in files if os.path.basename(rel) in ENTRY_NAMES]
    print("\nentry points and build files:")
    for rel in entries[:20] or ["(none found)"]:
        print(f"  {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
