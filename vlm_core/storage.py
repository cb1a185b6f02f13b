"""Every path in the platform is an fsspec URL: a local path, file://, or s3://.

Credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION) and the endpoint from AWS_ENDPOINT_URL / S3_ENDPOINT, so nothing
secret is ever written to a config, a manifest or a log.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get(
        "S3_ENDPOINT"
    )


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for ``url``: only the endpoint comes from us, keys stay in botocore's hands."""
    if protocol(url) in ("s3", "s3a"):
        endpoint = s3_endpoint()
        if endpoint:
            if "://" not in endpoint:  # TensorBoard's S3_ENDPOINT convention is host:port
                endpoint = "http://" + endpoint
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def protocol(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def is_local(url: str) -> bool:
    return protocol(url) in ("file", "local")


def local_path(url: str) -> str:
    """The filesystem path of a local URL (``file:///x`` or ``/x``)."""
    if not is_local(url):
        raise ValueError(f"{url!r} is not a local path")
    return url.split("://", 1)[1] if "://" in url else url


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding ``url`` and the path within it."""
    return url_to_fs(url, **storage_options(url))


def join(base: str, *parts: str) -> str:
    """Join URL parts with '/', keeping the scheme of ``base``; absolute parts win."""
    out = base
    for part in parts:
        if "://" in part or part.startswith("/"):
            out = part
        else:
            out = out.rstrip("/") + "/" + part if out else part
    return out


def parent(url: str) -> str:
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(url.rstrip("/")) or "."


def open_url(url: str, mode: str = "rb", **kwargs: Any) -> IO:
    """Open a URL (a context manager), creating parent folders for local writes."""
    fs, path = filesystem(url)
    if "w" in mode or "a" in mode:
        fs.makedirs(fs._parent(path), exist_ok=True)
    return fs.open(path, mode, **kwargs)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write so that readers see either the old object or the whole new one, never a part.

    Object stores publish a PUT atomically; on a filesystem we write a temporary sibling and
    rename it into place.
    """
    fs, path = filesystem(url)
    if is_local(url):
        fs.makedirs(fs._parent(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_text_atomic(url: str, text: str) -> None:
    write_bytes_atomic(url, text.encode("utf-8"))


@contextlib.contextmanager
def local_copy_dir(url: str) -> Iterator[str]:
    """A local folder with the contents of ``url`` (the folder itself when already local)."""
    if is_local(url):
        yield local_path(url)
        return
    import tempfile

    fs, path = filesystem(url)
    with tempfile.TemporaryDirectory(prefix="vlm-") as tmp:
        fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
        yield tmp


def upload_dir(local_dir: str, url: str) -> None:
    """Copy a local folder to ``url`` (a plain copy when ``url`` is local too)."""
    fs, path = filesystem(url)
    if is_local(url):
        import shutil

        shutil.copytree(local_dir, path, dirs_exist_ok=True)
    else:
        fs.put(local_dir.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)
