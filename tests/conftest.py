"""Shared fixtures: a small synthetic dataset, a local Ray instance that tests stop by handle, one real tiny
search, and the fake Vast the `vast` tests rent from (with the environment its boxes run in)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Ray 2.60 turns token authentication on when a token exists; tests run their own local Ray with it.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# Search state is signed with a per-user key (search/integrity.py); tests use their own, not the user's.
os.environ.setdefault("HIMARI_RAY_KEY_FILE", os.path.join(tempfile.mkdtemp(prefix="himari-test-key-"), "state.key"))

from himari_ray.data.dataset import DataSpec, load_dataset
from tests.fake_vast import FakeVast
from tests.vast_kit import KEY, OFFERS, REPO

SMALL_SPEC = DataSpec(source="synthetic", n_bars=3000, seed=3)


@pytest.fixture(scope="session")
def small_dataset():
    return load_dataset(SMALL_SPEC)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for one test module, shut down by its own handle (never `ray stop`)."""
    import ray

    from himari_ray.search.ray_session import init_local_ray

    # "local": our own instance, never the last `ray start` cluster on this machine (see search/ray_session.py)
    init_local_ray(num_cpus=2)
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


#: How many hours of the bundled sample `bars_file` holds.
BARS_FILE_HOURS = 2500


@pytest.fixture(scope="module")
def bars_file(tmp_path_factory) -> Path:
    """The first BARS_FILE_HOURS hours of the bundled real BTC sample as a plain freqtrade-layout CSV (the
    export and deployment tests' bars)."""
    import pandas as pd

    from himari_ray.data.dataset import sample_path

    path = tmp_path_factory.mktemp("bars") / "BTC_USDT-1h.csv"
    pd.read_csv(sample_path(), nrows=BARS_FILE_HOURS).to_csv(path, index=False)
    return path


@pytest.fixture
def box_env(tmp_path):
    """The box has himari-ray and ray on its PATH (the on-start's install step is a no-op here)."""
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "himari-ray").write_text(f'#!/bin/bash\nexec {sys.executable} -m himari_ray "$@"\n')
    (shims / "himari-ray").chmod(0o755)
    path = f"{shims}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    # The box's `ray start` records its address under RAY_TMPDIR: a private one keeps every other
    # `ray.init()` on this machine from finding and joining the box's Ray (short: Ray's sockets live there).
    ray_tmp = tempfile.mkdtemp(prefix="hr", dir="/tmp")
    yield {"PATH": path, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token", "RAY_TMPDIR": ray_tmp}
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture
def fake(tmp_path, box_env):
    """The fake Vast (tests/fake_vast.py) serving OFFERS, its boxes run here in box_env: one per test."""
    offers = [dict(o) for o in OFFERS]
    f = FakeVast(tmp_path / "vast", offers, KEY, box_env=box_env)
    yield f
    f.stop()


@pytest.fixture(scope="module")
def fuzz_vast(tmp_path_factory):
    """The fake Vast the `vast` fuzz tests share: one per module, offering nothing, reset by each example
    (tests/fuzz_vast_kit.reset); its boxes never run."""
    f = FakeVast(tmp_path_factory.mktemp("fake-vast"), [], KEY)
    yield f
    f.stop()
