"""A real S3-compatible server for tests: moto's server mode (PyPI package moto[server]) on a free
loopback port, started as its own process and stopped by its PID. Credentials are dummies passed
through the environment, as a real deployment passes them (never in a job file)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port

    def uri(self, bucket: str, prefix: str = "") -> str:
        """s3://bucket/prefix with the endpoint in pyarrow's URI options (no secrets in it)."""
        path = f"{bucket}/{prefix}".rstrip("/")
        return f"s3://{path}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def make_bucket(self, bucket: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=f"http://{self.endpoint}", region_name="us-east-1").create_bucket(
            Bucket=bucket
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server for the block; skips when moto's server mode is not installed."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    pytest.importorskip("boto3")
    os.environ.update(ENV)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.2)
        yield S3Server(f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
