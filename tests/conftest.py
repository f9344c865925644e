"""Shared fixtures: a small synthetic dataset and a local Ray instance that tests stop by handle."""

from __future__ import annotations

import os
import tempfile

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

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
