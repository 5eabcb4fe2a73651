"""Checkpoint integrity: manifests catch truncated, altered and half-copied checkpoints, the
restore falls back to the newest intact one, nothing is unpickled, and a full disk fails
only the write in progress."""

import json
import os
import pickle
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from vqct.launch.runs import RAY_SNAPSHOT, repair_ray_snapshot
from vqct.records.deepspeed_files import trusted_loading
from vqct.records.checkpoint_integrity import (DamagedCheckpoint, STATE_FILE, choose_checkpoint, verify_checkpoint,
                                             write_manifest)


def _fake_checkpoint(run_dir: Path, step: int, world: int = 2) -> Path:
    """A checkpoint as Ray Train assembles it: each rank's files, then its manifest."""
    directory = run_dir / f"checkpoint_2026-11-22_00-00-{step:02d}.000000"
    for rank in range(world):
        rank_dir = run_dir / f"rank{rank}-{step}"
        (rank_dir / "generator" / "state").mkdir(parents=True)
        torch.save({"w": torch.full((64,), float(step + rank))},
                   rank_dir / "generator" / "state" / f"zero_pp_rank_{rank}_optim_states.pt")
        if rank == 0:
            (rank_dir / STATE_FILE).write_text(json.dumps({"step": step, "world_size": world}))
        write_manifest(rank_dir, rank)
        shutil.copytree(rank_dir, directory, dirs_exist_ok=True)
        shutil.rmtree(rank_dir)
    return directory


def _shard(directory: Path, rank: int = 1) -> Path:
    return directory / "generator" / "state" / f"zero_pp_rank_{rank}_optim_states.pt"


def test_an_intact_checkpoint_verifies(tmp_path):
    assert verify_checkpoint(_fake_checkpoint(tmp_path, 10))["step"] == 10


@pytest.mark.parametrize("damage, needle", [
    (lambda d: _shard(d).write_bytes(_shard(d).read_bytes()[:100]), "bytes, expected"),
    (lambda d: _shard(d).write_bytes(bytes([_shard(d).read_bytes()[0] ^ 1]) + _shard(d).read_bytes()[1:]),
     "checksum"),
    (lambda d: _shard(d).unlink(), "is missing"),
    (lambda d: (d / "vqct_manifest_rank1.json").unlink(), "rank 1's manifest is missing"),
    (lambda d: (d / STATE_FILE).write_text('{"step": 1'), "unreadable"),
])
def test_damage_is_detected_and_named(tmp_path, damage, needle):
    directory = _fake_checkpoint(tmp_path, 10)
    damage(directory)
    with pytest.raises(DamagedCheckpoint, match=needle):
        verify_checkpoint(directory)


def test_restore_passes_over_a_damaged_latest_to_the_previous_one(tmp_path):
    """By step, not by Ray's registration: a damaged newest is named and passed over."""
    _fake_checkpoint(tmp_path, 10)
    middle = _fake_checkpoint(tmp_path, 20)
    latest = _fake_checkpoint(tmp_path, 30)
    _shard(latest).write_bytes(b"")  # truncated to nothing
    chosen, rejected = choose_checkpoint(tmp_path, preferred=middle)  # Ray's latest may lag behind
    assert chosen == middle
    assert len(rejected) == 1 and latest.name in rejected[0] and "damaged" in rejected[0]
    assert choose_checkpoint(tmp_path / "nothing-here") == (None, [])


def test_a_complete_checkpoint_ray_never_registered_is_used(tmp_path):
    """The driver died after every rank's files landed, before Ray recorded the checkpoint."""
    registered = _fake_checkpoint(tmp_path, 10)
    unregistered = _fake_checkpoint(tmp_path, 15)
    assert choose_checkpoint(tmp_path, preferred=registered) == (unregistered, [])


def test_a_checkpoint_cut_short_by_a_full_disk_leaves_the_previous_one_usable(tmp_path):
    """A small tmpfs fills up while the second checkpoint is copied into it the way Ray
    Train uploads one (pyarrow's copy_files): only that copy fails."""
    from pyarrow import fs

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    source = tmp_path / "local"
    first, second = _fake_checkpoint(source, 10), _fake_checkpoint(source, 20)
    big = second / "generator" / "state" / "zero_pp_rank_0_optim_states.pt"
    torch.save({"w": torch.zeros(400_000)}, big)  # 1.6 MB: more than the disk has left
    write_manifest(second, 0)
    storage = tmp_path / "storage"
    storage.mkdir()
    size = sum(p.stat().st_size for p in first.rglob("*") if p.is_file()) + 256 * 1024
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(storage)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        fs.copy_files(str(first), str(storage / first.name))
        with pytest.raises(OSError):
            fs.copy_files(str(second), str(storage / second.name))
        with pytest.raises(DamagedCheckpoint):
            verify_checkpoint(storage / second.name)  # the partial copy is there, and known for one
        chosen, _ = choose_checkpoint(storage, preferred=storage / second.name)
        assert chosen == storage / first.name and verify_checkpoint(chosen)["step"] == 10
    finally:
        subprocess.run(["umount", str(storage)], check=True)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_tampered_checkpoint_file_is_refused_not_run(tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    evil = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "extra": _Exploit(marker)}, evil)
    with trusted_loading():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(evil, weights_only=False)  # DeepSpeed's own call, overridden
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # restored afterwards
    torch.load(evil, weights_only=False)  # the same file outside the guard runs its code
    assert marker.exists()


def test_a_truncated_or_dangling_ray_snapshot_is_moved_aside(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RAY_SNAPSHOT).write_text('{"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_')
    repair_ray_snapshot(run_dir)
    assert not (run_dir / RAY_SNAPSHOT).exists()
    assert len(list(run_dir.glob(f"{RAY_SNAPSHOT}.damaged-*"))) == 1
    assert "unreadable" in capsys.readouterr().err

    good = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a"}]}
    (run_dir / "checkpoint_a").mkdir()
    (run_dir / RAY_SNAPSHOT).write_text(json.dumps(good))
    repair_ray_snapshot(run_dir)
    assert (run_dir / RAY_SNAPSHOT).exists()  # consistent: left alone
    (run_dir / "checkpoint_a").rmdir()
    repair_ray_snapshot(run_dir)
    assert not (run_dir / RAY_SNAPSHOT).exists()
    assert "lists missing checkpoint checkpoint_a" in capsys.readouterr().err


def test_run_locations_split_into_storage_and_run_for_directories_and_object_stores(tmp_path, monkeypatch):
    from vqct.errors import UserError
    from vqct.records.storage import run_storage, split_run_uri

    monkeypatch.setenv("VQCT_SCRATCH", str(tmp_path / "scratch"))
    storage, run = run_storage("s3://bucket/team/runs/e2e", mirror="rank1")
    assert (storage.remote, run, storage.root) == (True, "e2e", "bucket/team/runs")
    assert storage.uri("e2e/checkpoint_1") == "s3://bucket/team/runs/e2e/checkpoint_1"
    assert storage.local == tmp_path / "scratch" / "rank1" / "bucket" / "team" / "runs"
    assert storage.ray_storage()["storage_path"] == "bucket/team/runs"
    local, run = run_storage(str(tmp_path / "runs" / "e2e"))
    assert (local.remote, run, local.local) == (False, "e2e", tmp_path / "runs")
    assert local.ray_storage() == {"storage_path": str(tmp_path / "runs")}
    assert local.pull("e2e/x") == tmp_path / "runs" / "e2e" / "x"  # a directory is its own mirror
    assert split_run_uri("s3://bucket/runs/e2e/checkpoint_2026")[1] == "e2e/checkpoint_2026"
    assert split_run_uri("s3://bucket/runs/e2e")[1] == "e2e"
    with pytest.raises(UserError, match="give s3://BUCKET/PREFIX/RUN"):
        split_run_uri("s3://bucket")


def test_a_snapshot_listing_a_checkpoint_the_store_lacks_is_moved_aside(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a"}]}))
    assert repair_ray_snapshot(run_dir, present=["checkpoint_a"]) is None  # the store has it, no local copy needed
    aside = repair_ray_snapshot(run_dir, present=[])
    assert aside is not None and aside.is_file() and not (run_dir / RAY_SNAPSHOT).exists()


@pytest.mark.e2e  # starts an S3 API server
def test_where_to_resume_on_an_object_store_reads_listings_and_records_not_checkpoints(tmp_path, monkeypatch):
    """The stop message's checkpoint: the newest whose files are all in the store at their
    recorded sizes, found without pulling a checkpoint file; the same one a resume verifies."""
    from servers import s3_client, s3_env, start_s3_server, stop
    from vqct.records.checkpoint_integrity import choose_stored_checkpoint, newest_stored_checkpoint
    from vqct.records.storage import Storage

    server, endpoint = start_s3_server(tmp_path)
    try:
        for key, value in {**s3_env(endpoint), "VQCT_SCRATCH": str(tmp_path / "scratch")}.items():
            monkeypatch.setenv(key, value)
        client = s3_client(endpoint)
        client.create_bucket(Bucket="runs")
        local = tmp_path / "made"
        cut_short, truncated, intact = (_fake_checkpoint(local, step) for step in (15, 10, 5))
        (cut_short / "vqct_manifest_rank1.json").unlink()
        _shard(truncated).write_bytes(_shard(truncated).read_bytes()[:-10])
        for path in (p for p in local.rglob("*") if p.is_file()):
            client.upload_file(str(path), "runs", f"team/run/{path.relative_to(local).as_posix()}")
        storage = Storage("s3://runs/team")

        assert newest_stored_checkpoint(storage, "run") == intact.name
        pulled = {p.name for p in (tmp_path / "scratch").rglob("*") if p.is_file()}
        assert pulled == {STATE_FILE, "vqct_manifest_rank0.json", "vqct_manifest_rank1.json"}  # records only
        chosen, rejected = choose_stored_checkpoint(storage, "run")
        assert chosen.name == intact.name and len(rejected) == 2
        assert newest_stored_checkpoint(Storage("s3://runs/nothing"), "run") is None
    finally:
        stop(server, timeout=10)
