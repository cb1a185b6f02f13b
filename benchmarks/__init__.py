"""Performance harness: side-by-side ratios of our stack against the obvious alternative.

``python -m benchmarks [--quick] [--only NAME] [--json FILE]`` runs every ``bench_*.py`` module's
``bench(quick) -> list[Row]`` (see ``harness.py``) and prints one table.
"""
