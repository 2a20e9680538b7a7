"""The workspace diff: what a session changed, from two tar snapshots of the workspace
(files under a ``.git`` directory are not the work: they are left out)."""

from __future__ import annotations

import difflib
import io
import tarfile


def _files(archive: bytes | None) -> dict[str, bytes]:
    if not archive:
        return {}
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and ".git" not in name.split("/"):  # git's own files: noise
                handle = tar.extractfile(member)
                if handle is not None:
                    out[name] = handle.read()
    return out


def workspace_diff(
    before: bytes | None, after: bytes, limit: int = 1_000_000, skip: str | None = None
) -> tuple[str, list[str]]:
    """A unified diff of text files (binary files named only) and the changed paths; paths
    under the folder ``skip`` (e.g. ``.skills``) are left out."""
    if before == after:  # nothing touched: the archives are byte for byte the same
        return "", []
    old, new = _files(before), _files(after)
    changed = sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))
    if skip:
        changed = [p for p in changed if not p.startswith(f"{skip.rstrip('/')}/")]
    parts: list[str] = []
    for path in changed:
        a, b = old.get(path), new.get(path)
        try:
            a_text = a.decode() if a is not None else ""
            b_text = b.decode() if b is not None else ""
        except UnicodeDecodeError:
            parts.append(f"Binary file {path} changed\n")
            continue
        parts.extend(
            difflib.unified_diff(
                a_text.splitlines(keepends=True),
                b_text.splitlines(keepends=True),
                fromfile=f"a/{path}" if a is not None else "/dev/null",
                tofile=f"b/{path}" if b is not None else "/dev/null",
            )
        )
        if parts and not parts[-1].endswith("\n"):
            parts[-1] += "\n\\ No newline at end of file\n"
    text = "".join(parts)
    if len(text) > limit:
        text = text[:limit] + f"\n[... diff cut at {limit} characters ...]\n"
    return text, changed
