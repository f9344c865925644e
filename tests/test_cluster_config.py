"""cluster.yaml: valid for Ray's cluster launcher, and never starts Ray without token authentication."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load(CLUSTER.read_text())


def test_valid_for_the_ray_cluster_launcher(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_every_ray_start_requires_token_auth(cluster):
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cluster[key]]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    assert all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    assert "~/.ray/auth_token" in cluster["file_mounts"]


def test_dashboard_never_listens_on_a_public_address(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in CLUSTER.read_text()
