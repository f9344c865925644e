"""cluster.yaml (SSH boxes) and cluster_aws.yaml (cloud): valid for Ray's cluster launcher by its own
schema, never start Ray without token authentication, never expose the dashboard, every key commented."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "cluster.yaml", ROOT / "cluster_aws.yaml"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_valid_for_the_ray_cluster_launcher(path):
    validate_config(prepare_config(copy.deepcopy(load(path))))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_ray_start_requires_token_auth(path):
    cluster = load(path)
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cluster[key]]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    assert all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    assert "~/.ray/auth_token" in cluster["file_mounts"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dashboard_never_listens_on_a_public_address(path):
    head = " ".join(load(path)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in path.read_text()


def test_a_cluster_file_with_an_unknown_key_is_refused_by_the_schema():
    cluster = load(FILES[1])
    cluster["max_wrokers"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_wrokers"):
        validate_config(prepare_config(cluster))


def test_cloud_template_has_a_cpu_head_a_gpu_worker_type_and_pinned_install():
    cluster = load(FILES[1])
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0  # trials go to workers
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert len(workers) == 1 and workers[0]["resources"]["GPU"] >= 1
    assert 0 <= workers[0]["min_workers"] <= workers[0]["max_workers"] <= cluster["max_workers"]
    installs = [c for c in cluster["setup_commands"] if "pip install" in c and "himari-ray" in c]
    assert len(installs) == 1 and re.search(r"@v?\d+\.\d+\.\d+|==\d", installs[0])  # pinned, not latest
    # Tune's storage_path on object storage: the documented search names it, and every node may reach it.
    text = FILES[1].read_text()
    assert re.search(r"himari-ray search .*--tune-storage s3://", text, re.S)
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())


def _key_lines(text: str) -> list[tuple[int, str]]:
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(- )?([A-Za-z_~.][\w./~-]*):(\s|$)", line)
        if m and not line.lstrip().startswith("#"):
            out.append((i, m.group(3)))
    return out


def test_every_key_of_the_cloud_template_is_commented():
    """A comment line directly above each key (or a trailing one) says what it is for."""
    lines = FILES[1].read_text().splitlines()
    bare = [
        key
        for i, key in _key_lines(FILES[1].read_text())
        if not lines[i - 1].lstrip().startswith("#") and "#" not in lines[i]
    ]
    assert bare == []
