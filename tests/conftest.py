"""Shared fixtures: a small synthetic dataset and a local Ray instance that tests stop by handle."""

from __future__ import annotations

import os

import pytest

# Ray 2.60 turns token authentication on when a token exists; tests run their own local Ray with it.
os.environ.setdefault("RAY_AUTH_MODE", "token")

from himari_ray.data.dataset import DataSpec, load_dataset

SMALL_SPEC = DataSpec(source="synthetic", n_bars=3000, seed=3)


@pytest.fixture(scope="session")
def small_dataset():
    return load_dataset(SMALL_SPEC)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for one test module, shut down by its own handle (never `ray stop`)."""
    import ray

    # address="local": a fresh instance even while another cluster (`ray start`, another test's) is running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
