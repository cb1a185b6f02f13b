"""An S3 API on this machine (moto's server on 127.0.0.1), for local runs, tests and benchmarks.

While it runs, the standard AWS variables point every client at it — boto3, s3fs, TensorBoard and
the processes a local run starts inherit them — and they are restored afterwards. The keys are
moto's throw-away test values, never real credentials.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from vlm_core.ports import free_port

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def local_s3_server() -> Iterator[str]:
    """Run moto's S3 server; yields its endpoint URL with the AWS variables set to reach it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**LOCAL_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
