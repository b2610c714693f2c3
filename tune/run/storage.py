"""A sweep's folder, local or behind a URI (s3://, gs://, ...), through pyarrow's filesystems."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pyarrow import fs as pafs

from trainables.data import Manifest, read_manifest

__all__ = ["RunStorage"]


class RunStorage:
    """``<root>/<name>``: the folder Ray Tune writes the experiment into, plus boxtune's own files."""

    def __init__(self, root: str, name: str):
        self.remote = "://" in root and not root.startswith("file://")
        if self.remote:
            self.fs, root_path = pafs.FileSystem.from_uri(root)
            self.parent_uri = root.rstrip("/")
        else:
            root_path = os.path.abspath(root.removeprefix("file://"))
            self.fs = pafs.LocalFileSystem()
            self.parent_uri = root_path
        self.name = name
        self.path = f"{root_path.rstrip('/')}/{name}"
        self.uri = f"{self.parent_uri}/{name}"

    @classmethod
    def from_uri(cls, run: str) -> RunStorage:
        run = run.rstrip("/")
        if "://" not in run:
            run = os.path.abspath(run)
        parent, _, name = run.rpartition("/")
        return cls(parent or "/", name)

    @property
    def filesystem_for_ray(self):
        return None  # Ray resolves the same URI itself

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(f"{self.path}/{rel}").type != pafs.FileType.NotFound

    def write_text(self, rel: str, text: str) -> None:
        self.fs.create_dir(self.path, recursive=True)
        tmp = f"{self.path}/.{rel}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            out.write(text.encode())
        self.fs.move(tmp, f"{self.path}/{rel}")

    def read_text(self, rel: str) -> str:
        with self.fs.open_input_stream(f"{self.path}/{rel}") as src:
            return src.read().decode()

    def write_manifest(self, rel: str, manifest: Manifest) -> None:
        if not self.remote:
            Path(self.path).mkdir(parents=True, exist_ok=True)
            manifest.write(Path(self.path) / rel)
            return
        with tempfile.TemporaryDirectory() as tmp:
            manifest.write(Path(tmp) / rel)
            pafs.copy_files(str(Path(tmp) / rel), f"{self.path}/{rel}", destination_filesystem=self.fs)

    def upload(self, local: str, rel: str) -> None:
        """Copy the local file ``local`` to ``rel`` in the folder (one object written whole on an object store)."""
        self.fs.create_dir(self.path, recursive=True)
        pafs.copy_files(local, f"{self.path}/{rel}", destination_filesystem=self.fs)

    def download(self, rel: str, local: str) -> None:
        """Copy ``rel`` of the folder to the local file ``local``, replacing it."""
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(f"{self.path}/{rel}", local, source_filesystem=self.fs)

    def read_manifest(self, rel: str) -> Manifest:
        if not self.remote:
            return read_manifest(Path(self.path) / rel)
        with tempfile.TemporaryDirectory() as tmp:
            pafs.copy_files(f"{self.path}/{rel}", str(Path(tmp) / rel), source_filesystem=self.fs)
            return read_manifest(Path(tmp) / rel)
