"""Join the cluster in RAY_ADDRESS, or start the embedded local instance on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

from vqct.errors import UserError


def _probe(address: str, timeout: float = 3.0) -> None:
    """Fail fast (exit 2) when nothing listens at RAY_ADDRESS, instead of Ray's long retries."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise UserError(f"RAY_ADDRESS='{address}' is not host:port (e.g. 127.0.0.1:6379 or ray://head:10001)")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(
            f"RAY_ADDRESS={address}: no Ray cluster answers at {host}:{port} ({exc.strerror or exc}); "
            "start one with `ray start --head`, fix the address, or unset RAY_ADDRESS to train "
            "on a local Ray instance"
        ) from None


def connect(num_cpus_needed: int, worker_env: dict[str, str]) -> bool:
    """Connect to Ray. Returns True when this call connected (and so must disconnect)."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        _probe(address)
    else:
        # Every listener of the embedded instance on loopback; auth mode explicit so that
        # this instance does not switch token auth on for clusters started later.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": worker_env}
    if address:
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except (ConnectionError, RuntimeError) as exc:
            raise UserError(f"RAY_ADDRESS={address}: could not join the Ray cluster: {exc}") from None
        return True
    object_store_mb = int(os.environ.get("VQCT_OBJECT_STORE_MB", "256"))
    print(f"starting a local Ray instance on 127.0.0.1 ({num_cpus_needed} CPUs)", file=sys.stderr)
    ray.init(
        num_cpus=max(os.cpu_count() or 1, num_cpus_needed),
        object_store_memory=object_store_mb * 2**20,
        # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner
        # polls (without it, it warns every few seconds); loopback only.
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=True,
    )
    return True
