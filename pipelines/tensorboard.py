"""Start TensorBoard on a run's ``<output>/tensorboard`` (a local folder or object storage).

TensorBoard reads ``s3://`` log dirs itself (through boto3) and takes the endpoint from
``S3_ENDPOINT``; we derive that from ``AWS_ENDPOINT_URL`` so one variable serves every tool.
"""

from __future__ import annotations

import os

from vlm_core import storage


def logdir_for(output: str) -> str:
    return storage.join(output, "tensorboard")


def tensorboard_env(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` plus what TensorBoard's S3 reader needs to reach the same endpoint as fsspec."""
    env = dict(environ)
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint and "S3_ENDPOINT" not in env:
        env["S3_ENDPOINT"] = endpoint
    if env.get("S3_ENDPOINT", "").startswith("http://"):
        env.setdefault("S3_USE_HTTPS", "0")
    return env


def serve(logdir: str, *, host: str = "127.0.0.1", port: int = 6006) -> None:
    """Run TensorBoard in the foreground until interrupted."""
    from tensorboard import program

    os.environ.update(tensorboard_env(dict(os.environ)))
    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", logdir, "--host", host, "--port", str(port)])
    board.main()
