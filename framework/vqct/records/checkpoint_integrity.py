"""Is a checkpoint directory complete and intact, and which one should a run restore?

Ray Train copies every rank's files into `checkpoint_<time>/` and registers the
directory only once all ranks reported; a copy cut short (driver killed, disk full,
node lost) leaves an unregistered, partial directory, and bit rot or a truncating copy
can damage a registered one. So each rank also writes a manifest of the files it
saved (size and SHA-256), renamed into place only after they are complete: a
checkpoint counts only when every rank's manifest is there and every file matches.
The restore walks the run's checkpoints newest first and takes the first intact one.
"""

from __future__ import annotations

import json
from pathlib import Path

from vqct.files import atomic_write_text, sha256_file

STATE_FILE = "vqct_state.json"
MANIFEST = "vqct_manifest_rank{rank}.json"
CHECKPOINT_PREFIX = "checkpoint_"


class DamagedCheckpoint(Exception):
    """The checkpoint is incomplete or its files do not match their manifest."""


def write_manifest(directory: Path, rank: int) -> None:
    """Called by each rank after it saved everything into its own DIRECTORY."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if not name.startswith(("vqct_manifest_rank", ".")):
            files[name] = [path.stat().st_size, sha256_file(path)]
    atomic_write_text(directory / MANIFEST.format(rank=rank), json.dumps({"rank": rank, "files": files}))


def read_state(directory: Path) -> dict:
    try:
        return json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        raise DamagedCheckpoint(f"no {STATE_FILE}") from None
    except (OSError, ValueError) as exc:
        raise DamagedCheckpoint(f"{STATE_FILE} unreadable ({exc})") from None


def _world_size(state: dict) -> int:
    return int(state.get("world_size", 1))


def _listed_files(directory: Path, state: dict) -> dict[str, list]:
    """Every file the ranks' manifests in DIRECTORY list: name -> [size, sha256]; raises
    DamagedCheckpoint when a manifest is missing or unreadable."""
    files = {}
    for rank in range(_world_size(state)):
        manifest = directory / MANIFEST.format(rank=rank)
        try:
            files.update(json.loads(manifest.read_text())["files"])
        except FileNotFoundError:
            raise DamagedCheckpoint(f"rank {rank}'s manifest is missing (write cut short)") from None
        except (OSError, ValueError, KeyError) as exc:
            raise DamagedCheckpoint(f"{manifest.name} unreadable ({exc})") from None
    return files


def verify_checkpoint(directory: Path) -> dict:
    """Returns the checkpoint's state; raises DamagedCheckpoint naming the first fault."""
    state = read_state(directory)
    for name, (size, digest) in _listed_files(directory, state).items():
        path = directory / name
        if not path.is_file():
            raise DamagedCheckpoint(f"{name} is missing")
        if path.stat().st_size != size:
            raise DamagedCheckpoint(f"{name} has {path.stat().st_size} bytes, expected {size}")
        if sha256_file(path) != digest:
            raise DamagedCheckpoint(f"{name} does not match its checksum")
    return state


def _step_of(directory: Path) -> int:
    try:
        return int(read_state(directory).get("step", -1))
    except DamagedCheckpoint:
        return -1


def checkpoints_newest_first(run_dir: Path, preferred: Path | None = None) -> list[Path]:
    """The run's checkpoints (and PREFERRED, Ray's latest, wherever it is) by step, newest
    first. Ray's latest is not always the newest: a checkpoint whose files all landed
    before the driver died is complete (its manifests say so) but never registered."""
    found = [p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()] if run_dir.is_dir() else []
    if preferred is not None and all(p.resolve() != Path(preferred).resolve() for p in found):
        found.append(Path(preferred))
    return sorted(found, key=lambda p: (_step_of(p), p.name), reverse=True)


def choose_checkpoint(run_dir: Path, preferred: Path | None = None) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint (or None) and one line per damaged one passed over."""
    return _first_intact(checkpoints_newest_first(run_dir, preferred))


def choose_stored_checkpoint(storage, run_name: str, preferred: Path | None = None) -> tuple[Path | None, list[str]]:
    """choose_checkpoint over run RUN_NAME of STORAGE (records/storage.py). In an object store
    each candidate, newest step first, is pulled into the mirror and verified there; the
    local path of the one taken."""
    if not storage.remote:
        return choose_checkpoint(storage.local / run_name, preferred)
    return _first_intact(storage.pull(f"{run_name}/{name}")  # pulled one at a time
                         for name in _stored_newest_first(storage, run_name))


def newest_stored_checkpoint(storage, run_name: str) -> str | None:
    """The name of the run's newest intact checkpoint, for a message (where to resume from).
    In an object store without pulling the checkpoints: its state and manifests are pulled,
    and every file they list must be in a listing of the store at its recorded size. An
    object store writes each object whole or not at all and checks its own content, so a
    complete set is an intact one; what a resume restores it still verifies in full."""
    if not storage.remote:
        return getattr(choose_checkpoint(storage.local / run_name)[0], "name", None)
    for name in _stored_newest_first(storage, run_name):
        rel = f"{run_name}/{name}"
        try:
            state = read_state(storage.pull(f"{rel}/{STATE_FILE}").parent)
            for rank in range(_world_size(state)):
                storage.pull(f"{rel}/{MANIFEST.format(rank=rank)}")
            listed = _listed_files(storage.local / rel, state)
        except DamagedCheckpoint:
            continue
        sizes = storage.file_sizes(rel)
        if all(sizes.get(f) == size for f, (size, _) in listed.items()):
            return name
    return None


def _stored_newest_first(storage, run_name: str) -> list[str]:
    """The run's checkpoint names in an object store by step, newest first (only their state pulled)."""
    names = [n for n in storage.list_dirs(run_name) if n.startswith(CHECKPOINT_PREFIX)]
    steps = {n: _step_of(storage.pull(f"{run_name}/{n}/{STATE_FILE}").parent) for n in names}
    return sorted(names, key=lambda n: (steps[n], n), reverse=True)


def _first_intact(candidates) -> tuple[Path | None, list[str]]:
    rejected = []
    for candidate in candidates:
        try:
            verify_checkpoint(candidate)
            return candidate, rejected
        except DamagedCheckpoint as exc:
            rejected.append(f"checkpoint {candidate.name} is damaged ({exc}): skipped")
    return None, rejected
