"""Position tables laid out on a 2-D patch grid: fixed sin-cos tables and resizing between grids."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def square_side(num_tokens: int, what: str) -> int:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{what} must lie on a square grid, got {num_tokens} tokens")
    return side


def near_square_grid(num_tokens: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == num_tokens and rows <= cols as close as possible."""
    rows = math.isqrt(num_tokens)
    while num_tokens % rows:
        rows -= 1
    return rows, num_tokens // rows


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.reshape(-1, 1).double() * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """MAE / Qwen-VL 2-D sin-cos table ``(rows*cols, dim)``, row-major.

    The first half of the channels encodes the column (x) and the second half the row (y), as in
    the MAE reference code that Qwen-VL's resampler uses.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embeddings need a width divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    table = torch.cat([_sincos_1d(dim // 2, xs), _sincos_1d(dim // 2, ys)], dim=1)
    return table.float()


def resize_grid_table(table: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a row-major ``(src_rows*src_cols, D)`` table to ``dst`` (float32 math)."""
    if tuple(src) == tuple(dst):
        return table
    grid = table.float().reshape(1, src[0], src[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(dst), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(dst[0] * dst[1], -1).to(table.dtype)
