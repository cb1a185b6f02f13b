"""Shared measuring tools: side-by-side timing, result rows, the machine, peak FLOPs and memory.

Every ratio in the table is measured in the same run, baseline and ours alternating, so drift on
a shared machine (other processes, thermal state) hits both sides alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypedDict


class Row(TypedDict):
    name: str
    unit: str
    baseline: float | None
    ours: float | None
    ratio: float | None
    target: str | None
    note: str


def row(
    name: str,
    unit: str,
    baseline: float,
    ours: float,
    *,
    target: str | None = None,
    note: str = "",
    lower_is_better: bool = False,
) -> Row:
    """A table row whose ratio reads "how many times better ours is": >1 means ours wins.

    For rates (samples/s) that is ours / baseline; for costs (seconds, MB) baseline / ours.
    """
    ratio = baseline / ours if lower_is_better else ours / baseline
    if lower_is_better:
        note = f"{note}; lower is better, ratio = baseline/ours".lstrip("; ")
    return Row(name=name, unit=unit, baseline=baseline, ours=ours, ratio=ratio, target=target, note=note)


def error_row(name: str, error: BaseException) -> Row:
    message = f"{type(error).__name__}: {error}".splitlines()[0][:160]
    return Row(name=name, unit="", baseline=None, ours=None, ratio=None, target=None, note=f"ERROR {message}")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it to the kernel.

    By default glibc serves every block over 32 MB with a fresh mmap and unmaps it on free, so a
    training step at benchmark shapes page-faults and re-zeroes its activations every time: on the
    2-core VM that was 20-30 % system time and step times swinging from 8.7 to 13.4 s, enough to
    drown a few-percent difference. Set once per process, for both sides alike; a no-op off glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 1 << 30)  # 1 GB: every activation at benchmark shapes comes from the heap
    mallopt(m_trim_threshold, (1 << 31) - 1)  # never give the heap's top back


def alternate(
    baseline_fn: Callable[[], Any], ours_fn: Callable[[], Any], reps: int, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Seconds per call of each side, interleaved; warm-up calls run first and are not kept.

    Who goes first flips every repetition, so neither side always inherits the other's caches.
    Both run with ``keep_freed_memory``, so page-fault noise does not decide the ratio.
    """
    keep_freed_memory()
    for _ in range(warmup):
        baseline_fn()
        ours_fn()
    baseline_times: list[float] = []
    ours_times: list[float] = []
    for rep in range(reps):
        pair = [(baseline_fn, baseline_times), (ours_fn, ours_times)]
        for fn, sink in pair if rep % 2 == 0 else reversed(pair):
            sink.append(timed(fn))
    return baseline_times, ours_times


def median(values: list[float]) -> float:
    return statistics.median(values)


# ----------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine() -> dict[str, Any]:
    import torch
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": device(),
    }
    if info["device"] == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ----------------------------------------------------------------------------- peak FLOPs


_PEAK_CACHE: dict[tuple[str, int], float] = {}


def peak_matmul_flops(size: int = 2048, reps: int = 5) -> float:
    """Best observed fp32 FLOP/s of a square GEMM on this device (2 * n^3 per product).

    The best, not the median, of several runs: it is the ceiling MFU is measured against.
    """
    import torch

    key = (device(), size)
    if key not in _PEAK_CACHE:
        a = torch.randn(size, size, device=key[0])
        b = torch.randn(size, size, device=key[0])
        torch.mm(a, b)  # warm-up: thread pool, allocator
        best = float("inf")
        for _ in range(reps):
            best = min(best, timed(lambda: (torch.mm(a, b), _sync())))
        _PEAK_CACHE[key] = 2 * size**3 / best
    return _PEAK_CACHE[key]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- peak memory


_RSS_WORKER = """
import gc, importlib, json, resource, sys
spec = json.loads(sys.argv[1])
for name in spec["preload"]:
    importlib.import_module(name)
import torch
torch.set_num_threads(spec["threads"])
module, func = spec["target"].split(":")
target = getattr(importlib.import_module(module), func)  # importing the target's module is not its cost

def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

gc.collect()
try:  # Linux: reset the high-water mark, so transient peaks of the imports cannot count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kb("VmRSS")
    target(**spec["kwargs"])
    peak = status_kb("VmHWM")
except OSError:
    before = status_kb("VmRSS")
    target(**spec["kwargs"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("PEAK_KB", peak - before)
"""


def peak_rss_mb(target: str, kwargs: dict[str, Any], preload: tuple[str, ...] = ()) -> float:
    """Peak resident memory (MB) that ``module:function(**kwargs)`` adds, in a fresh process.

    The process's high-water mark (VmHWM, reset just before the call) minus its resident size once
    the libraries are loaded (``preload``: import the same ones for both sides), so only what the
    call itself allocates counts.
    """
    import torch

    spec = {"target": target, "kwargs": kwargs, "preload": list(preload), "threads": torch.get_num_threads()}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", _RSS_WORKER, json.dumps(spec)], capture_output=True, text=True, env=env, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("PEAK_KB "):
            return int(line.split()[1]) / 1024  # Linux reports ru_maxrss in KiB
    raise RuntimeError(f"memory probe {target} failed (exit {done.returncode}): {done.stderr.strip()[-400:]}")
