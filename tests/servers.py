"""Servers the tests start on 127.0.0.1 and stop by PID (never by name)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_file_server(directory: Path) -> tuple[subprocess.Popen, str]:
    """Python's own HTTP server over DIRECTORY on 127.0.0.1; returns (process, base URL) once it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while True:  # it answers within a second on an idle machine; a busy one may take longer
        if proc.poll() is not None:
            raise RuntimeError(f"the HTTP server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return proc, url
        except OSError:
            time.sleep(0.2)


def stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, a grace period, then SIGKILL to whatever of its process group is left."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_mlflow_server(root: Path, port: int, env: dict | None = None, backend: str | None = None,
                        artifacts: str | None = None, workers: int = 1) -> tuple[subprocess.Popen, str]:
    """`mlflow server` with BACKEND (default: ROOT's sqlite store), proxying artifacts to
    ARTIFACTS (default ROOT/artifacts; clients reach them only through the server); returns
    once /health answers."""
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", str(workers), "--backend-store-uri", backend or f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", artifacts or str(root / "artifacts")], cwd=root,
                            env=dict(env or os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # a safety net: a loaded machine starts it slowly
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            stop(proc, timeout=5)
            raise RuntimeError("mlflow server did not come up")
        time.sleep(1)


def start_ray_head(temp_dir: str, port: int | None = None, cpus: int = 2,
                   env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`ray start --head --block` on loopback (its own process group); returns once the
    GCS port accepts connections. TEMP_DIR must be short: Ray's unix sockets live there."""
    port = port or free_port()
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", f"--port={port}",
         f"--num-cpus={cpus}", "--include-dashboard=false", "--object-store-memory=268435456",
         "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", **(env or {})))
    deadline = time.time() + 600  # a safety net: a loaded machine starts it slowly
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"127.0.0.1:{port}"
        time.sleep(0.5)
    stop(proc, timeout=5)
    raise RuntimeError("the Ray head did not come up")


def _wait_for_port(proc: subprocess.Popen, port: int, what: str) -> None:
    deadline = time.time() + 600  # a safety net: a loaded machine starts it slowly
    while time.time() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    stop(proc, timeout=5)
    raise RuntimeError(f"{what} did not come up")


S3_KEYS = {"AWS_ACCESS_KEY_ID": "vqct-test", "AWS_SECRET_ACCESS_KEY": "vqct-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}


def start_s3_server(root: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 API server on 127.0.0.1 (a real HTTP server answering boto3 and pyarrow, its
    buckets in memory); returns (process, endpoint URL)."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for_port(proc, port, "the S3 server")
    return proc, f"http://127.0.0.1:{port}"


def s3_env(endpoint: str) -> dict:
    """What a process needs to reach the test S3 server: the usual AWS variables, and MLflow's."""
    return {**S3_KEYS, "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}


def s3_client(endpoint: str):
    """A boto3 client of the test S3 server, with its keys (whatever this process's environment says)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=S3_KEYS["AWS_DEFAULT_REGION"],
                        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])


def _postgres_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    return str(found[-1])


def start_postgres() -> tuple[subprocess.Popen, str, str]:
    """A PostgreSQL server of its own on 127.0.0.1, its data in a new directory owned by the
    user it runs as (postgres when the tests run as root: it refuses root); returns (process,
    the URL of its database "mlflow", the data directory)."""
    import pwd
    import tempfile

    user = "postgres" if os.geteuid() == 0 else None
    data = tempfile.mkdtemp(prefix="vqct-pg-")  # not under pytest's tmp_path: that is private to root
    if user:
        os.chown(data, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    subprocess.run([_postgres_bin("initdb"), "-D", data, "-A", "trust", "-U", "postgres"], user=user, check=True,
                   capture_output=True, cwd=data)
    port = free_port()
    proc = subprocess.Popen([_postgres_bin("postgres"), "-D", data, "-k", data, "-h", "127.0.0.1", "-p", str(port)],
                            user=user, cwd=data, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _wait_for_port(proc, port, "PostgreSQL")
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE mlflow"],
                   check=True, capture_output=True)
    return proc, f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow", data


def stop_postgres(proc: subprocess.Popen, data: str) -> None:
    """SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every client to leave)."""
    import shutil

    proc.send_signal(signal.SIGINT)
    stop(proc, timeout=30)
    shutil.rmtree(data, ignore_errors=True)


def second_node_args(ports: list[int]) -> list[str]:
    """`ray start` arguments for a second Ray node on the head's host: six PORTS of its own
    (node manager first; two nodes' defaults collide) and worker ports above the head's
    default range (10002-19999) and below the kernel's ephemeral one, so that they never meet."""
    low = 20000 + (os.getpid() % 50) * 200
    return ["--node-ip-address=127.0.0.1", f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
            f"--metrics-export-port={ports[2]}", f"--dashboard-agent-listen-port={ports[3]}",
            f"--dashboard-agent-grpc-port={ports[4]}", f"--runtime-env-agent-port={ports[5]}",
            f"--min-worker-port={low}", f"--max-worker-port={low + 199}", "--object-store-memory=268435456"]


def start_ray_node(temp_dir: str, address: str, cpus: int = 1, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """A second Ray node on this machine joining the head at ADDRESS: every port of its own
    (second_node_args), its own TEMP_DIR (Ray's scratch, on the head's machine
    shared only because it is one machine). Returns (process, its raylet's node-manager port, by which
    raylet_pid finds it) once the raylet listens."""
    ports = [free_port() for _ in range(6)]
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [str(ray), "start", "--block", f"--address={address}", f"--num-cpus={cpus}", *second_node_args(ports),
         "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=open(Path(temp_dir) / "ray_start.log", "w"), start_new_session=True,
        env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", **(env or {})))
    deadline = time.time() + 600  # a safety net: a loaded machine starts it slowly
    while time.time() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", ports[0])) == 0:
                return proc, ports[0]
        time.sleep(0.5)
    stop(proc, timeout=5)
    raise RuntimeError("the second Ray node did not come up: "
                       + (Path(temp_dir) / "ray_start.log").read_text()[-2000:])


def raylet_pid(node_manager_port: int) -> int:
    """The PID of the raylet listening on NODE_MANAGER_PORT (its command line says so)."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "raylet" in (proc.info["name"] or "") and f"--node_manager_port={node_manager_port}" in cmdline:
            return proc.pid
    raise RuntimeError(f"no raylet with node_manager_port={node_manager_port}")
