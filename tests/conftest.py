"""Shared fixtures: a real S3 API (moto's server on 127.0.0.1) reached through s3fs."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of a moto S3 server; AWS variables point every client at it."""
    from operators.embedded_s3 import local_s3_server

    with local_s3_server() as endpoint:
        yield endpoint


@pytest.fixture()
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket; returns its ``s3://name`` URL."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    fs.mkdir(name)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{name}"


# What a launcher (torchrun, the training operator) or accelerate leaves in the environment: a
# test must not inherit a world from an earlier test (a stale MASTER_PORT is a port some other
# process may hold), and the processes a test starts must not either.
_WORLD_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_CPU")


@pytest.fixture(autouse=True)
def _no_inherited_world(monkeypatch):
    for name in _WORLD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
