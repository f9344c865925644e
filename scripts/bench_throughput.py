#!/usr/bin/env python
"""Moved to bench/bench_throughput.py (benchmarks live under bench/); this wrapper keeps the old command."""

from __future__ import annotations

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "bench_throughput.py"), run_name="__main__")
