"""``python -m benchmarks``: run the ``bench_*`` modules and print one table of ratios."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path

import benchmarks
from benchmarks.harness import Row, error_row, machine

DEFAULT_JSON = Path(__file__).parent / "results" / "latest.json"


def discover() -> list[str]:
    """Benchmark names (module names without the ``bench_`` prefix), sorted."""
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))


def run_one(name: str, quick: bool) -> list[Row]:
    """A module's rows; a module that fails to import or run becomes one error row."""
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        return list(module.bench(quick))
    except Exception as err:  # one unfinished or broken module must not hide the others
        traceback.print_exc()
        return [error_row(name, err)]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def format_table(rows: list[Row], info: dict) -> str:
    header = ", ".join(f"{k}={v}" for k, v in info.items())
    cols = ["name", "unit", "baseline", "ours", "ratio", "target", "note"]
    cells = [cols] + [
        [r["name"], r["unit"], _fmt(r["baseline"]), _fmt(r["ours"]),
         "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"] or "", r["note"]]
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols) - 1)]
    lines = [f"machine: {header}"]
    for i, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths)) + "  " + c[-1])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  ----")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    known = discover()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions (a smoke run)")
    parser.add_argument("--only", action="append", metavar="NAME", help=f"run only these (repeatable): {', '.join(known)}")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where the results go (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)

    names = [n.removeprefix("bench_") for n in args.only] if args.only else known
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")

    info = machine()
    rows: list[Row] = []
    started = time.time()
    for name in names:
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        rows.extend(run_one(name, args.quick))
    info["seconds"] = round(time.time() - started, 1)

    print(format_table(rows, info))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "quick": args.quick, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
