"""A moto S3 server on 127.0.0.1 for the object-storage tests (test_mds.py, test_object_store.py); stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_s3(log: Path) -> Iterator[dict[str, Any]]:
    """{"endpoint", "env" (credentials and endpoint for boto3, s3fs and MosaicML Streaming), "client" (boto3)};
    the server's request log goes to `log`."""
    import boto3

    port = _free_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    endpoint = f"http://127.0.0.1:{port}"
    env["S3_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL"] = endpoint  # Streaming reads the first, botocore (s3fs) the second
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    try:
        while True:  # ready when the port accepts a connection; a server that exited fails the fixture
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                try:
                    proc.wait(timeout=0.05)
                    raise RuntimeError(f"moto server exited ({proc.returncode}):\n{log.read_text()}")
                except subprocess.TimeoutExpired:
                    pass
        client = boto3.client(
            "s3", endpoint_url=endpoint, **{k.lower(): v for k, v in env.items() if k.startswith("AWS_") and k.endswith(("_ID", "_KEY"))}
        )
        yield {"endpoint": endpoint, "env": env, "client": client}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
