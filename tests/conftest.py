"""Shared fixtures: a small synthetic dataset and a local Ray instance that tests stop by handle."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Ray 2.60 turns token authentication on when a token exists; tests run their own local Ray with it.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# Search state is signed with a per-user key (search/integrity.py); tests use their own, not the user's.
os.environ.setdefault("HIMARI_RAY_KEY_FILE", os.path.join(tempfile.mkdtemp(prefix="himari-test-key-"), "state.key"))

from himari_ray.data.dataset import DataSpec, load_dataset

SMALL_SPEC = DataSpec(source="synthetic", n_bars=3000, seed=3)


@pytest.fixture(scope="session")
def small_dataset():
    return load_dataset(SMALL_SPEC)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for one test module, shut down by its own handle (never `ray stop`)."""
    import ray

    # "local": our own instance, never the last `ray start` cluster on this machine (see search/driver.py)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


REPORT_SPACE = "tests/spaces/report.yaml"


@pytest.fixture(scope="session")
def real_search(tmp_path_factory):
    """One real, tiny search (6 trials: finished, stopped or collapsed, and preflight-skipped ones) through
    the real CLI in its own process, shared by the analyze/report/study tests. While it runs, the results
    are read until a read shows a running trial (`running`: what `analyze` sees mid-search). Returns (out dir,
    driver stdout, running)."""
    import contextlib
    import subprocess
    import sys
    import time

    from himari_ray.report import load_search

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("real_search") / "out"
    env = {**os.environ, "PYTHONPATH": str(repo), "RAY_AUTH_MODE": "token"}
    cmd = [sys.executable, "-m", "himari_ray", "search", str(repo / REPORT_SPACE), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    from himari_ray.searchdir import RUNNING

    running = None
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        # Read until a read catches a trial running: the first reports may all be the preflight's instant skips.
        seen = running is not None and RUNNING in set(running["status"])
        if not seen and any(p.stat().st_size for p in out.glob("tune/trial_*/result.json")):
            with contextlib.suppress(Exception):  # a half-created directory: try again on the next poll
                running = load_search(out).trials
        time.sleep(0.3)
    stdout, stderr = proc.communicate(timeout=max(1, deadline - time.monotonic()))
    assert proc.returncode == 0, stderr[-3000:]
    return out, stdout, running


def edited_space(raw: dict, tmp_path, **changes) -> Path:
    """Write a space (a parsed YAML dict) to tmp_path/space.yaml with dotted keys changed (`train.lr=...`;
    None deletes the key): how the space tests make the file they load."""
    import yaml

    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
