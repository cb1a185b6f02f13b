"""Loading images from URLs or bytes, with failures turned into bad samples."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from vlm_core import storage
from vlm_core.data.types import BadSample, ImageRef

if TYPE_CHECKING:
    from PIL import Image


def load_image(ref: ImageRef) -> Image.Image:
    """An RGB PIL image; a missing file raises BadSample("missing_image"), undecodable bytes
    BadSample("corrupt_image")."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(ref, (bytes, bytearray, memoryview)):
        data, where = bytes(ref), "inline image bytes"
    else:
        try:
            data = storage.read_bytes(ref)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
            raise BadSample("missing_image", f"{ref}: {type(err).__name__}") from None
        where = ref
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode now: truncated files fail here, not deep in a worker later
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadSample("corrupt_image", f"{where}: {err}") from None

