"""cluster/slurm/vqct_ray.sbatch on a real two-node SLURM cluster (Debian slurm-wlm, whose
build allows several slurmd on one host) that the test starts on 127.0.0.1 (munged,
slurmctld, one slurmd per emulated node; config in a temp dir) and stops by PID. The job's
path is the multi-node one: the Ray head in a step on the first node, a Ray node in a step on
the second, one worker on each, checkpoints in an S3 API server (no disk in common). A tiny
recipe runs to completion, and scancel mid-run leaves no Ray process on either node.

What one host cannot show: nodes with addresses of their own (both are 127.0.0.1, so the
script's `hostname --ip-address` is replaced by VQCT_HEAD_IP), disks the nodes really cannot
read of each other, GPUs, and a network between hosts."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO
from servers import free_port, s3_client, s3_env, second_node_args, start_s3_server, stop

pytestmark = pytest.mark.e2e
SCRIPT = REPO / "cluster" / "slurm" / "vqct_ray.sbatch"

if not shutil.which("slurmctld"):
    pytest.skip("slurm-wlm is not installed (make test installs it where apt-get can)", allow_module_level=True)


SLURM_CONF = """ClusterName=vqct
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={n1_port}
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool-%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
SlurmUser={user}
ReturnToService=2
MpiDefault=none
KillWait=30
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port={n1_port} CPUs=1 RealMemory=8000 State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port={n2_port} CPUs=1 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
NODES = ("n1", "n2")
BUCKET = "vqct-slurm"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster needs root (slurmd launches jobs as their users)")
    root = Path(tempfile.mkdtemp(prefix="vqslurm-", dir="/tmp"))
    root.chmod(0o755)
    for sub in ("state", *(f"spool-{n}" for n in NODES)):
        (root / sub).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(ctld_port=free_port(), n1_port=free_port(), n2_port=free_port(), dir=root,
                                      user="root"))
    env = dict(os.environ, SLURM_CONF=str(conf))
    daemons = [
        subprocess.Popen(["munged", "-F", "-f", f"--socket={root}/munge.sock", "--key-file=/etc/munge/munge.key",
                          f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid",
                          f"--seed-file={root}/munged.seed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    time.sleep(1)
    daemons.append(subprocess.Popen(["slurmctld", "-D", "-f", str(conf)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for node in NODES:
        daemons.append(subprocess.Popen(["slurmd", "-D", "-N", node, "-f", str(conf)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    s3, endpoint = start_s3_server(root)
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    deadline = time.time() + 600  # a safety net, not a measure
    while subprocess.run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%N"], env=env, capture_output=True,
                         text=True).stdout.split() != list(NODES):
        if time.time() > deadline:
            raise RuntimeError(f"the SLURM node did not come up: {(root / 'slurmctld.log').read_text()[-2000:]}")
        time.sleep(1)
    yield dict(env, **s3_env(endpoint)), root
    for proc in reversed(daemons):
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    stop(s3, timeout=10)
    shutil.rmtree(root, ignore_errors=True)


def _job_env(env: dict, tmp_path: Path) -> dict:
    """One worker per node; the second node's Ray on ports of its own (it shares the head's host)."""
    bin_dir = str(Path(sys.executable).parent)
    node_args = " ".join(second_node_args([free_port() for _ in range(6)]))
    return dict(env, PATH=f"{bin_dir}:{env.get('PATH', '')}", PYTHONPATH=str(REPO), VQCT_RECIPE="vqgan_shapes",
                VQCT_WORKERS_PER_NODE="1", VQCT_HEAD_IP="127.0.0.1", VQCT_RAY_PORT=str(free_port()),
                VQCT_RAY_HEAD_ARGS="--object-store-memory=268435456", VQCT_RAY_NODE_ARGS=node_args,
                VQCT_SCRATCH=str(tmp_path / "scratch"))


def _overrides(tmp_path, shapes_dir, steps):
    """Checkpoints in the S3 server, under a prefix of the test's own."""
    return [f"data.train_shards={shapes_dir}/train", f"data.val_shards={shapes_dir}/val", "data.batch_size=8",
            "data.val_batches=1", f"trainer.max_steps={steps}", f"trainer.checkpoint_every={steps}",
            "trainer.log_every=1", f"trainer.image_every={steps}", "optim.warmup_steps=0",
            f"trainer.storage_path=s3://{BUCKET}/{tmp_path.name}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]


def _ray_processes(marker: str = "vqct-ray-") -> set[int]:
    """Processes of the job's Ray cluster (their command lines name its temp dir) and their children."""
    parents = {}
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents[int(entry.name)] = ppid
        if marker in cmdline:
            found.add(int(entry.name))
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found
        grew = bool(children)
        found |= children
    return found


def _program(pid: int) -> str:
    """The program a process runs (its argv[0]); empty once it has ended."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _ray_temp_dirs() -> set[str]:
    """The jobs' Ray temp dirs (vqct_ray.sbatch's mktemp); its teardown removes its own last."""
    return {str(p) for p in Path("/tmp").glob("vqct-ray-*")}


def test_sbatch_runs_a_recipe_through_ray_to_completion(slurm, tmp_path, shapes_dir):
    env, _ = slurm
    temp_dirs = _ray_temp_dirs()
    out = tmp_path / "job.out"
    proc = subprocess.run(["sbatch", "--wait", "--nodes=2", "-c", "1", "-o", str(out), str(SCRIPT),
                           *_overrides(tmp_path, shapes_dir, 3)], env=_job_env(env, tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    log = out.read_text() if out.exists() else ""
    assert proc.returncode == 0, (proc.stderr + log)[-4000:]
    result = json.loads([ln for ln in log.splitlines() if ln.startswith('{"run_id"')][-1])
    assert result["steps"] == 3 and result["recipe"] == "vqgan_shapes"
    assert result["checkpoint"].startswith(f"s3://{BUCKET}/{tmp_path.name}/"), result
    # two workers of one CPU each on two Ray nodes of one CPU each: one worker per node
    assert "head on n1" in log and "2 node(s) x 1 worker(s)" in log and "stopping Ray" in log
    assert not _ray_processes() and _ray_temp_dirs() <= temp_dirs


def test_scancel_mid_run_leaves_no_ray_processes(slurm, tmp_path, shapes_dir):
    env, _ = slurm
    temp_dirs = _ray_temp_dirs()
    out = tmp_path / "job.out"
    submitted = subprocess.run(["sbatch", "--parsable", "--nodes=2", "-c", "1", "-o", str(out), str(SCRIPT),
                                *_overrides(tmp_path, shapes_dir, 2000)], env=_job_env(env, tmp_path), cwd=tmp_path,
                               capture_output=True, text=True, timeout=60, check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.time() + 600
    while "train:" not in (out.read_text() if out.exists() else ""):  # the workers are training
        assert time.time() < deadline, (out.read_text() if out.exists() else "no output")[-3000:]
        time.sleep(2)
    alive = _ray_processes()
    assert len(alive) >= 3  # raylet, GCS, workers...
    raylets = [pid for pid in alive if _program(pid).endswith("/raylet")]
    assert len(raylets) == 2, "one raylet per SLURM node"
    subprocess.run(["scancel", job_id], env=env, check=True, timeout=30)
    deadline = time.time() + 600  # a safety net, not a measure
    while subprocess.run(["squeue", "-h", "-j", job_id], env=env, capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, "the job did not end after scancel"
        time.sleep(1)
    time.sleep(3)
    left = {pid for pid in alive if Path(f"/proc/{pid}").exists()} | _ray_processes()
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left if Path(f"/proc/{p}").exists()]
    log = out.read_text()
    assert "stopping Ray" in log  # the script's own teardown ran on SIGTERM, before SLURM's SIGKILL
    # ...and began at once: bash defers a trap while a foreground command runs, so a script
    # that ran `vqct train` in the foreground reached its teardown only after the driver exited.
    # (The driver may not print at all: SLURM signals the raylet too, whose exit ends it.)
    if "vqct: interrupted" in log:
        assert log.index("stopping Ray") < log.index("vqct: interrupted")
    # KILLED: by the driver's signal thread (launch/signals.py) or, when the driver died with the
    # raylet before its mark landed, by the script's teardown (`vqct mark-killed`).
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]
    assert _ray_temp_dirs() <= temp_dirs  # the teardown ran to its end, not cut short by SIGKILL
    closed = json.loads([ln for ln in log.splitlines() if ln.startswith('{"run_dir"')][-1])
    assert closed["mlflow_run_id"] == runs[0].info.run_id and closed["status"] == "KILLED"
