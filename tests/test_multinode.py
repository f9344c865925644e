"""Searches across nodes: a real two-node Ray cluster on one machine (the second node on 127.0.0.2) with
token authentication, trials on both nodes, a node lost mid-trial, and drivers sharing one study through
Optuna's gRPC storage proxy. Real drivers in real processes; all marked slow."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "tests" / "spaces"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"}
CLI = [sys.executable, "-m", "himari_ray"]

pytestmark = pytest.mark.slow


def reports(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line being written
    return out


def space_file(tmp_path: Path, name: str, iterations: int) -> Path:
    text = (SPACES / "e2e.yaml").read_text().replace("name: e2e", f"name: {name}")
    text = text.replace("iterations: 2,", f"iterations: {iterations},")
    text = text.replace("scheduler: {grace_period: 2}", f"scheduler: {{grace_period: {iterations}}}")
    text = text.replace("collapse: {warmup: 2}", f"collapse: {{warmup: {iterations + 1}}}")  # none cut short
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def private_ray_tmp(monkeypatch):
    """A Ray temp dir of this test's own: a cluster started here records its address there, not in
    /tmp/ray/ray_current_cluster, where every plain `ray.init()` on the machine would find and join it.
    Short, because Ray's socket paths live under it."""
    path = tempfile.mkdtemp(prefix="hr", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    yield {**ENV, "RAY_TMPDIR": path}
    shutil.rmtree(path, ignore_errors=True)


def test_trials_land_on_both_nodes_and_a_trial_on_a_lost_node_resumes_from_its_checkpoint(tmp_path, private_ray_tmp):
    from ray.cluster_utils import Cluster

    env = private_ray_tmp

    # One CPU per node and one per trial: the two trials must run on different nodes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.2")
        out, shared = tmp_path / "out", tmp_path / "shared"  # shared: the storage every node reaches
        space = space_file(tmp_path, "multinode", iterations=6)
        driver = subprocess.Popen(
            [*CLI, "search", str(space), "--out", str(out), "--address", cluster.address, "--tune-storage", str(shared)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        # Lose the worker node once its trial has checkpointed twice and before that trial ends.
        killed_at, lost = None, None
        deadline = time.monotonic() + 240
        while killed_at is None and time.monotonic() < deadline and driver.poll() is None:
            for trial_dir in shared.glob("multinode-*/trial_*"):
                rs = reports(trial_dir)
                if rs and rs[-1]["node_ip"] == "127.0.0.2" and 2 <= rs[-1]["iteration"] < 6:
                    cluster.remove_node(worker, allow_graceful=False)
                    killed_at, lost = rs[-1]["iteration"], trial_dir
                    break
            time.sleep(0.2)
        assert killed_at is not None, "no trial ran on the second node"
        _, stderr = driver.communicate(timeout=300)
        assert driver.returncode == 0, stderr[-3000:]

        # The trials ran in the shared storage; the search directory got a copy, which analyze reads.
        remote = json.loads((out / "search.json").read_text())["tune_storage"]
        assert Path(remote).parent == shared and (Path(remote) / lost.name / "result.json").is_file()
        lost = out / "tune" / lost.name
        assert sorted(p.name for p in (out / "tune").glob("trial_*")) == sorted(
            p.name for p in Path(remote).glob("trial_*")
        )
        placement = {d.name: sorted({r["node_ip"] for r in reports(d)}) for d in sorted((out / "tune").glob("trial_*"))}
        print(f"\ntrial placement (node ips per trial): {placement}; node 127.0.0.2 lost at iteration {killed_at}")
        assert {ip for ips in placement.values() for ip in ips} >= {"127.0.0.2", cluster.head_node.node_ip_address}

        resumed = reports(lost)
        iterations = [r["iteration"] for r in resumed]
        print(f"lost trial {lost.name}: iterations {iterations}, nodes {[r['node_ip'] for r in resumed]}")
        assert resumed[-1]["iteration"] == 6  # it finished
        restart = next(r for r in resumed if r["iterations_since_restore"] == 1 and r["iteration"] > 1)
        assert restart["node_ip"] != "127.0.0.2"  # the node is gone: it resumed on the head
        # From its checkpoint, not from scratch: the node may finish one more report while it is being killed.
        assert 1 < restart["iteration"] <= killed_at + 2
        assert iterations == sorted(iterations)
        study = optuna.load_study(study_name="multinode", storage=f"sqlite:///{out / 'study.db'}")
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
        # The Tune state in the shared storage was written by every node, not signed here: no resume from it.
        again = subprocess.run(
            [*CLI, "search", "--resume", str(out)], capture_output=True, text=True, env=env, timeout=60
        )
        assert again.returncode == 2 and "resume reads signed state only" in again.stderr.strip().splitlines()[-1]

        no_token = subprocess.run(
            [*CLI, "search", str(space), "--out", str(tmp_path / "x"), "--address", cluster.address],
            capture_output=True, text=True, env={**env, "RAY_AUTH_MODE": "disabled"}, timeout=120,
        )  # fmt: skip
        assert no_token.returncode == 2 and "cannot join" in no_token.stderr.strip().splitlines()[-1]
    finally:
        cluster.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_drivers_through_the_grpc_proxy_add_trials_to_one_study(tmp_path):
    from himari_ray.launch.proxy import StudyProxy

    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = space_file(tmp_path, "shared", iterations=2)
    with StudyProxy(url, port=free_port()) as proxy:

        def start(name: str) -> subprocess.Popen:
            cmd = [*CLI, "search", str(space), "--out", str(tmp_path / name), "--trials", "1", "--storage", proxy.url]
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)

        # The drivers stand for two machines: b starts its own Ray once a's is up (tune/ exists), so the two
        # local Ray starts do not race for one 2-CPU box; their trials still overlap in the study.
        first = start("a")
        deadline = time.monotonic() + 120
        while not (tmp_path / "a" / "tune").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        drivers = [first, start("b")]
        for d in drivers:
            _, err = d.communicate(timeout=300)
            assert d.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=url)
    owners = {t.user_attrs["himari_search_dir"] for t in study.trials}
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert owners == {str((tmp_path / n).resolve()) for n in ("a", "b")}  # one trial from each driver
