"""ARCHITECTURE.md names code and tests: each must exist, so the document cannot rot quietly."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "ARCHITECTURE.md").read_text()


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_file_the_architecture_names_exists() -> None:
    paths = set(
        re.findall(
            r"`((?:fleet|serve|actors|harness|sandboxes|core|tests|benchmarks)/"
            r"[\w/]+\.py)",
            DOC,
        )
    )
    assert len(paths) > 20
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert missing == []


def test_every_test_the_failure_table_names_exists() -> None:
    cited: list[tuple[str, str]] = []
    for row in DOC.splitlines():
        last_file = None
        for path, name in re.findall(r"`(?:(tests/\w+\.py))?::(\w+)`", row):
            last_file = path or last_file
            assert last_file, f"a test named without its file: {row}"
            cited.append((last_file, name))
    assert len(cited) > 15
    missing = [f"{p}::{n}" for p, n in cited if n not in _functions(ROOT / p)]
    assert missing == []
