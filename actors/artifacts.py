"""Where the supervisor keeps what sessions leave behind: diffs, workspace snapshots, parked
loop states. Beside the events by default (``<events_dir>/_artifacts``), on any filesystem
pyarrow supports. Refs are paths relative to the root, safe to put in events."""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


class ArtifactStore:
    def __init__(self, root: str) -> None:
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        except (pa.ArrowInvalid, ValueError):
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)

    def put(self, task_id: str, name: str, data: bytes) -> str:
        ref = f"{task_id}/{name}"
        path = f"{self.root}/{ref}"
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as out:
            out.write(data)
        return ref

    def get(self, ref: str) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{ref}") as src:
            return src.read()

    def put_json(self, task_id: str, name: str, value: Any) -> str:
        return self.put(task_id, name, json.dumps(value).encode())

    def get_json(self, ref: str) -> Any:
        return json.loads(self.get(ref))

    def path(self, ref: str) -> str:
        return f"{self.root}/{ref}"
