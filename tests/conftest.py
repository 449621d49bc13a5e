"""Shared fixtures: a real S3-compatible server (moto in server mode) on 127.0.0.1, and the
list of store backends every contract test runs on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch is not None and torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """A moto S3 server process; ``options`` are the fsspec storage_options that reach it."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto server exited at start") from None
                time.sleep(0.1)
        raise RuntimeError("moto server did not start within 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @property
    def options(self) -> dict[str, Any]:
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            "skip_instance_cache": True,
        }

    def new_bucket(self) -> str:
        import boto3

        name = f"b-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_url(s3_server: S3Server) -> tuple[str, dict[str, Any]]:
    """(a fresh s3:// URL in a fresh bucket, the storage_options that reach it)."""
    return f"s3://{s3_server.new_bucket()}/store", s3_server.options


@pytest.fixture(params=["local", "memory", "fsspec-memory", "s3"])
def store_url(
    request: pytest.FixtureRequest, tmp_path: Any
) -> tuple[str, dict[str, Any] | None]:
    """(url, storage_options) for one store backend; the contract suite runs on each."""
    kind = request.param
    if kind == "local":
        return str(tmp_path / "store"), None
    if kind == "memory":
        return f"memory://t-{uuid.uuid4().hex}", None
    if kind == "fsspec-memory":
        # memory:// with storage_options routes through FsspecStore (fsspec's MemoryFileSystem)
        return f"memory://f-{uuid.uuid4().hex}", {"skip_instance_cache": False}
    server: S3Server = request.getfixturevalue("s3_server")
    request.applymarker(pytest.mark.s3)
    return f"s3://{server.new_bucket()}/store", server.options
