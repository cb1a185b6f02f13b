"""The benchmark harness: alternating timing, ratio rows, memory probes, the table and its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import __main__ as cli
from benchmarks.harness import alternate, error_row, machine, peak_matmul_flops, peak_rss_mb, row

REPO = Path(__file__).resolve().parents[1]


def allocate(mb: int) -> None:
    """Target of the memory probe test: touch ``mb`` MB and keep it until return."""
    block = bytearray(mb * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])


def test_alternate_interleaves_flips_order_and_drops_warmup():
    calls: list[str] = []
    base_times, our_times = alternate(lambda: calls.append("b"), lambda: calls.append("o"), reps=3, warmup=1)
    assert calls == ["b", "o", "b", "o", "o", "b", "b", "o"]
    assert len(base_times) == len(our_times) == 3


def test_alternate_times_each_side():
    base_times, our_times = alternate(lambda: time.sleep(0.02), lambda: None, reps=2, warmup=0)
    assert min(base_times) >= 0.02 > max(our_times)


_RETAINED_AFTER_FREE = """
import sys
from benchmarks.harness import keep_freed_memory

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

if sys.argv[1] == "keep":
    keep_freed_memory()
before = rss_mb()
block = bytearray(200 * 2**20)
block[::4096] = b"x" * len(block[::4096])  # touch every page
del block
print(rss_mb() - before)
"""


@pytest.mark.parametrize("mode, retained", [("default", False), ("keep", True)])
def test_keep_freed_memory_keeps_large_blocks_for_reuse(mode, retained):
    done = subprocess.run([sys.executable, "-c", _RETAINED_AFTER_FREE, mode], cwd=REPO, capture_output=True,
                          text=True, check=True)
    kept_mb = float(done.stdout)
    # glibc's default unmaps a freed 200 MB block at once; with the harness's setting it stays
    assert (kept_mb > 150) == retained, kept_mb


def test_ratio_reads_higher_is_better_for_rates_and_costs():
    rate = row("r", "samples/s", baseline=10.0, ours=15.0)
    cost = row("m", "MB", baseline=300.0, ours=200.0, lower_is_better=True)
    assert rate["ratio"] == pytest.approx(1.5)
    assert cost["ratio"] == pytest.approx(1.5)
    assert "lower is better" in cost["note"]


def test_peak_rss_counts_what_the_call_allocates():
    small = peak_rss_mb("tests.test_benchmarks_harness:allocate", {"mb": 10})
    large = peak_rss_mb("tests.test_benchmarks_harness:allocate", {"mb": 200})
    assert 190 <= large <= 260
    assert small < 60


def test_peak_rss_failure_names_the_target():
    with pytest.raises(RuntimeError, match="no_such_function"):
        peak_rss_mb("tests.test_benchmarks_harness:no_such_function", {})


def test_peak_matmul_flops_is_plausible():
    flops = peak_matmul_flops(256, reps=2)
    assert 1e8 < flops < 1e14


def test_a_broken_module_becomes_an_error_row():
    rows = cli.run_one("does_not_exist", quick=True)
    assert rows[0]["ratio"] is None and rows[0]["note"].startswith("ERROR ModuleNotFoundError")


def test_discover_finds_the_bench_modules():
    assert {"packing", "train_step", "mfu"} <= set(cli.discover())


def test_main_writes_table_and_json_with_the_machine(tmp_path, capsys, monkeypatch):
    rows = {"packing": [row("packing", "tok/s", 2.0, 5.0, target=">=1.5x")], "mfu": [error_row("mfu", ValueError("boom"))]}
    monkeypatch.setattr(cli, "run_one", lambda name, quick: rows[name])  # the modules' own cost is not under test
    out = tmp_path / "r.json"
    assert cli.main(["--quick", "--only", "packing", "--only", "mfu", "--json", str(out)]) == 0

    table = capsys.readouterr().out
    assert "cpu=" in table and "2.50x" in table and "ERROR ValueError: boom" in table
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert {"cpu", "cores", "torch", "device"} <= data["machine"].keys()
    assert [r["name"] for r in data["rows"]] == ["packing", "mfu"]
    assert data["rows"][0]["ratio"] == pytest.approx(2.5)


def test_unknown_benchmark_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--only", "nope"])
    assert "unknown benchmark(s) nope" in capsys.readouterr().err


def test_machine_describes_this_host():
    info = machine()
    assert info["cores"] >= 1 and info["device"] in ("cpu", "cuda")
