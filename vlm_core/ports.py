"""The one free-port helper (local rendezvous, the local S3 server, the local PyTorchJob backend)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; another process may take it
    before the caller binds, so callers that can bind port 0 themselves should)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
