"""Where runs live (trainer.storage_path): a local or shared directory, or an object store as
s3://BUCKET/PREFIX, reached with the usual AWS variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION or AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL(_S3) for an S3
API other than AWS's).

Ray Train writes the checkpoints into the store itself (its RunConfig takes the same pyarrow
filesystem). Everything vqct reads of a run goes through local paths (the integrity scan
hashes files, DeepSpeed loads a directory), so each process works in a node-local mirror of
the store: `pull` copies what it needs into the mirror, `push` copies back what it wrote. No
node reads another's disk. On a directory the mirror is the directory and both do nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SCHEME = "s3://"


def is_remote(location: str | Path) -> bool:
    return str(location).startswith(SCHEME)


def s3_filesystem():
    """pyarrow's S3 filesystem (what Ray Train's storage uses) from the AWS variables; pyarrow
    itself ignores AWS_ENDPOINT_URL, so the endpoint is passed here."""
    from pyarrow import fs

    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint:
        options["endpoint_override"] = endpoint
    if region:
        options["region"] = region
    return fs.S3FileSystem(**options)


STORE_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                   "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def store_env() -> dict[str, str]:
    """The object store's endpoint and credentials as this process has them, for Ray workers
    on other nodes (nodes with credentials of their own, an instance role, need none). Not
    VQCT_SCRATCH: each node keeps its mirror where its own environment says."""
    return {k: v for k, v in os.environ.items() if k in STORE_VARIABLES}


def mirror_root() -> Path:
    """The node-local scratch that mirrors object stores (VQCT_SCRATCH, default ~/.cache/vqct-mirror)."""
    return Path(os.environ.get("VQCT_SCRATCH", "~/.cache/vqct-mirror")).expanduser()


class Storage:
    def __init__(self, location: str | Path, mirror: str = ""):
        """MIRROR: a subdirectory of the mirror of one's own, for processes of one node that
        pull the same files at the same time (the ranks of a run)."""
        self.location = str(location)
        if is_remote(location):
            self.fs = s3_filesystem()
            self.root = self.location[len(SCHEME):].strip("/")  # BUCKET/PREFIX
            self.local = mirror_root() / mirror / self.root
        else:
            self.fs, self.root = None, ""
            self.local = Path(location).expanduser().resolve()

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def _key(self, rel: str) -> str:
        return "/".join(p for p in (self.root, str(rel).strip("/")) if p)

    def uri(self, rel: str = "") -> str:
        """REL as the user names it: s3://BUCKET/PREFIX/REL, or the local path."""
        return SCHEME + self._key(rel) if self.remote else str(self.local / rel)

    def ray_storage(self) -> dict:
        """Ray Train's RunConfig arguments for this storage."""
        if self.remote:
            return {"storage_path": self.root, "storage_filesystem": self.fs}
        return {"storage_path": str(self.local)}

    def list_dirs(self, rel: str = "") -> list[str]:
        """Names of the directories directly under REL."""
        if not self.remote:
            base = self.local / rel
            return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        from pyarrow import fs

        found = self.fs.get_file_info(fs.FileSelector(self._key(rel), allow_not_found=True))
        return sorted(Path(i.path).name for i in found if i.type == fs.FileType.Directory)

    def file_sizes(self, rel: str) -> dict[str, int]:
        """Every file under REL with its size in bytes, by its path under REL (a listing only)."""
        if not self.remote:
            base = self.local / rel
            return {p.relative_to(base).as_posix(): p.stat().st_size for p in base.rglob("*") if p.is_file()}
        from pyarrow import fs

        prefix = self._key(rel) + "/"
        found = self.fs.get_file_info(fs.FileSelector(self._key(rel), recursive=True, allow_not_found=True))
        return {i.path[len(prefix):]: i.size for i in found if i.type == fs.FileType.File}

    def pull(self, rel: str) -> Path:
        """The file or directory REL copied from the store into the mirror (replacing what the
        mirror held there); its local path, which does not exist when the store has no REL."""
        local = self.local / rel
        if not self.remote:
            return local
        from pyarrow import fs

        kind = self.fs.get_file_info(self._key(rel)).type
        if local.is_dir():
            shutil.rmtree(local)  # a stale mirror must not mix with what the store holds
        elif local.exists():
            local.unlink()
        if kind in (fs.FileType.File, fs.FileType.Directory):
            # pyarrow makes the subdirectories it meets, not a directory's own destination
            (local if kind == fs.FileType.Directory else local.parent).mkdir(parents=True, exist_ok=True)
            fs.copy_files(self._key(rel), str(local), source_filesystem=self.fs,
                          destination_filesystem=fs.LocalFileSystem())
        return local

    def push(self, rel: str) -> None:
        """The mirror's file or directory REL copied into the store."""
        if not self.remote:
            return
        from pyarrow import fs

        fs.copy_files(str(self.local / rel), self._key(rel), source_filesystem=fs.LocalFileSystem(),
                      destination_filesystem=self.fs)

    def delete(self, rel: str) -> None:
        """The file REL, from the store and the mirror (nothing if it is not there)."""
        (self.local / rel).unlink(missing_ok=True)
        if self.remote:
            from pyarrow import fs

            if self.fs.get_file_info(self._key(rel)).type == fs.FileType.File:
                self.fs.delete_file(self._key(rel))


def run_storage(run_dir: str, mirror: str = "") -> tuple[Storage, str]:
    """A run directory (a path or s3://BUCKET/PREFIX/RUN) -> (its storage, the run's name)."""
    parent, _, name = str(run_dir).rstrip("/").rpartition("/")
    return Storage(parent or ".", mirror), name


def local_copy(location: str, mirror: str = "") -> Path:
    """A file or directory by its location: a local path as it is, an s3:// one pulled into
    the mirror first."""
    if not is_remote(location):
        return Path(location)
    storage, name = run_storage(location, mirror)
    return storage.pull(name)


def split_run_uri(target: str) -> tuple[Storage, str]:
    """s3://BUCKET/PREFIX/RUN[/CHECKPOINT] -> (the storage s3://BUCKET/PREFIX, RUN[/CHECKPOINT])
    when the last part is a checkpoint; the run name otherwise."""
    parts = target[len(SCHEME):].strip("/").split("/")
    cut = -2 if parts[-1].startswith("checkpoint_") else -1
    if len(parts) + cut < 1:
        from vqct.errors import UserError

        raise UserError(f"{target}: give s3://BUCKET/PREFIX/RUN or s3://BUCKET/PREFIX/RUN/checkpoint_<time>")
    return Storage(SCHEME + "/".join(parts[:cut])), "/".join(parts[cut:])


def _open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_):
    """An s3:// shard as a stream: webdataset has no opener for the scheme (its own list:
    pipe, http(s), gs, sftp, ...), so read the object through pyarrow with the AWS variables."""
    return s3_filesystem().open_input_stream(url[len(SCHEME):])


def enable_s3_shards() -> None:
    """Teach this process's webdataset to open s3:// shards (idempotent; each reader calls it)."""
    import importlib

    importlib.import_module("webdataset.gopen").gopen_schemes.setdefault("s3", _open_s3)
