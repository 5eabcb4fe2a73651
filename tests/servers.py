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


def start_mlflow_server(root: Path, port: int, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`mlflow server` with ROOT's sqlite store, proxying artifacts to ROOT/artifacts (clients
    reach them only through the server); returns once /health answers."""
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts")], cwd=root,
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


def start_ray_head(temp_dir: str, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`ray start --head --block` on loopback (its own process group); returns once the
    GCS port accepts connections. TEMP_DIR must be short: Ray's unix sockets live there."""
    port = port or free_port()
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--object-store-memory=268435456",
         "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600  # a safety net: a loaded machine starts it slowly
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"127.0.0.1:{port}"
        time.sleep(0.5)
    stop(proc, timeout=5)
    raise RuntimeError("the Ray head did not come up")
