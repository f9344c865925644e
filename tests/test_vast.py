"""`himari-ray vast` against a local fake of Vast's HTTP API (tests/fake_vast.py), in seconds and without
Ray: offers filtered, checked again and counted when broken; bad input one line, exit 2; a failed launch
(no offer, a refused creation, an instance never ready) leaves no instance of ours behind and nothing
billing; `down` and `logs` on what a killed `up` left; issue 18's errors, each one line. A box that runs
(the whole flow, a box lost mid-search) is `test_vast_box.py`'s. The API key never reaches output or files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from himari_ray.launch import manage
from himari_ray.launch.launcher import find_offers
from himari_ray.launch.ledger import Ledger
from himari_ray.launch.offers import parse_filter
from himari_ray.launch.vast import VastClient, VastError
from himari_ray.types import UserInputError
from tests.fake_vast import FakeVast
from tests.vast_kit import KEY, OFFERS, REPO, SPACES, assert_key_nowhere, free_port


def cli(fake: FakeVast, *args: str, key: str | None = KEY, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VAST_API_KEY"}
    env.update(PYTHONPATH=str(REPO), VAST_URL=fake.url, RAY_AUTH_MODE="token")
    if key is not None:
        env["VAST_API_KEY"] = key
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "himari_ray", "vast", *args], capture_output=True, text=True, env=env, timeout=120
    )


# --- offers and bad input (fast: real HTTP to the fake, no Ray) ---------------------------------------------


def test_offers_are_filtered_and_cheapest_first(fake):
    proc = cli(fake, "offers", "--gpu", "rtx_4090", "--filter", "dph<=1 reliability>=0.98")
    assert proc.returncode == 0, proc.stderr
    ids = [int(line.split()[0]) for line in proc.stdout.splitlines()[1:]]
    assert ids == [11, 12]
    proc = cli(fake, "offers", "--filter", "num_gpus>=2")
    assert [int(x.split()[0]) for x in proc.stdout.splitlines()[1:]] == [12]
    # The key went in the Authorization header only, never in a URL; nothing printed it.
    assert all(KEY not in path for _, path, _ in fake.requests)
    assert all(h.get("Authorization") == f"Bearer {KEY}" for _, _, h in fake.requests)
    assert_key_nowhere(proc.stdout, proc.stderr)


def test_the_filter_is_checked_again_on_what_the_api_returns():
    f = parse_filter("gpu=RTX_4090 dph<=0.5")
    from himari_ray.launch.offers import matches

    assert matches(OFFERS[0], f) and not matches(OFFERS[1], f)  # a server ignoring dph_total cannot make us pay 0.71


@pytest.mark.parametrize(
    ("args", "key", "message"),
    [
        (("offers",), None, "no Vast.ai API key: set VAST_API_KEY"),
        (("offers", "--filter", "dph<<1"), KEY, "--filter 'dph<<1': cannot read"),
        (("offers", "--filter", "colour=red"), KEY, "unknown field 'colour'"),
        (("offers", "--filter", "dph<=cheap"), KEY, "dph needs a number"),
        (("offers", "--gpu", "RTX_9999"), KEY, "--gpu 'RTX_9999': unknown GPU model; known: RTX_3060"),
        (("offers", "--filter", "gpu=GTX_480"), KEY, "unknown GPU model"),
        (("up", "e2e", "--out", "x", "--max-price", "-1"), KEY, "--max-price: must be > 0"),
        (("status", "nowhere"), KEY, "nowhere: not a launch directory"),
        (
            ("up", str(SPACES / "e2e.yaml"), "--out", "x", "--instances", "3", "--trials", "2"),
            KEY,
            "each instance needs a trial",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(fake, tmp_path, args, key, message):
    proc = cli(fake, *args, key=key, home=tmp_path / "home")  # no vastai key file in this HOME either
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not fake.instances


def test_the_key_file_vastai_writes_is_read(fake, tmp_path):
    home = tmp_path / "home"
    (home / ".config" / "vastai").mkdir(parents=True)
    (home / ".config" / "vastai" / "vast_api_key").write_text(KEY + "\n")
    proc = cli(fake, "offers", key=None, home=home)
    assert proc.returncode == 0, proc.stderr
    assert_key_nowhere(proc.stdout, proc.stderr)


def test_a_wrong_key_is_one_line_that_does_not_echo_it(fake):
    proc = cli(fake, "offers", key="vk-wrong-key-123")
    assert proc.returncode == 2 and "HTTP 401" in proc.stderr and "vk-wrong-key-123" not in proc.stderr


# --- failed launches leave nothing billing -------------------------------------------------------------------


def test_no_offers_rents_nothing(fake, tmp_path):
    proc = cli(fake, "up", str(SPACES / "e2e.yaml"), "--out", str(tmp_path / "run"), "--gpu", "H200")
    assert proc.returncode == 2 and proc.stderr.startswith("error: no offers: 0 match"), proc.stderr
    assert not fake.instances and not [r for r in fake.requests if r[0] == "PUT"]
    assert not (tmp_path / "run").exists()  # nothing rented: no directory left to block a rerun


def test_a_refused_creation_destroys_the_instances_already_created(fake, tmp_path):
    fake.offers[1]["_refuse"] = True  # the second-cheapest 4090 offer
    out = tmp_path / "run"
    proc = cli(
        fake, "up", str(SPACES / "e2e.yaml"), "--out", str(out), "--instances", "2", "--gpu", "RTX_4090",
        "--install", "sleep 60",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "refused to create an instance from offer 12" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert "this offer is no longer available); all instances destroyed" in proc.stderr
    assert not fake.instances  # the first one was created, then destroyed
    # Nothing ran and nothing bills: the cost is printed and --out is gone, so the same command can rerun.
    assert "instance 7000: destroyed (launch failed)" in proc.stdout and "cost: $" in proc.stdout
    assert f"{out}: removed: nothing ran and nothing bills" in proc.stdout
    assert not out.exists()
    assert_key_nowhere(proc.stdout, proc.stderr, dirs=(tmp_path,))


def test_an_instance_that_never_gets_ready_is_destroyed(fake, tmp_path):
    fake.offers[0]["_stuck"] = True
    proc = cli(
        fake, "up", str(SPACES / "e2e.yaml"), "--out", str(tmp_path / "run"), "--gpu", "RTX_4090", "--gpus", "1",
        "--filter", "num_gpus<=1", "--ready-timeout", "3",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "not ready after 3 s (Vast status loading); all instances destroyed; raise --ready-timeout" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not fake.instances


def test_down_destroys_what_a_killed_up_left_behind(fake, tmp_path):
    """`up` killed outright (SIGKILL: no cleanup ran) leaves launch.json and the ledger; `down` reads them."""
    client = VastClient(KEY, base_url=fake.url)
    out = tmp_path / "run"
    out.mkdir()
    iid = client.create_instance(11, "img", 30, "sleep 60", "himari-dead-0", env={})
    (out / "launch.json").write_text(json.dumps({"label": "himari-dead", "study": "e2e", "instances": {}}))
    lines: list[str] = []
    assert manage.down(out, client, echo=lines.append) == 0
    assert not fake.instances and lines[0] == f"instance {iid}: destroyed (down)"


def test_an_unknown_instance_for_logs_is_refused(fake, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "launch.json").write_text(json.dumps({"label": "himari-x", "study": "e2e", "instances": {}}))
    with pytest.raises(UserInputError, match="--instance 5: not an instance of this launch"):
        manage.logs(out, VastClient(KEY, base_url=fake.url), instance=5)


# --- issue 18: what Vast, the files and the flags can get wrong, each one line (fast: no Ray) ---------------


def test_a_network_error_names_the_reason_and_the_path_without_the_query(tmp_path):
    port = free_port()  # nothing listens there
    client = VastClient(KEY, base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(VastError) as err:
        find_offers(client, parse_filter("gpu=RTX_4090 dph<=0.5"))
    assert str(err.value) == f"GET /bundles/: cannot reach http://127.0.0.1:{port} (Connection refused)"


def test_offers_missing_fields_are_counted_not_dropped_silently(fake):
    fake.answer_offers = [
        *OFFERS[:2],
        {k: v for k, v in OFFERS[0].items() if k != "gpu_name"} | {"id": 15},
        OFFERS[0] | {"id": 16, "dph_total": "cheap"},
    ]
    proc = cli(fake, "offers", "--filter", "dph<=1")
    assert proc.returncode == 0, proc.stderr
    assert [int(x.split()[0]) for x in proc.stdout.splitlines()[1:]] == [11, 12]
    assert proc.stderr == "warning: skipped 2 of 4 offers Vast returned: 1 missing gpu_name, 1 dph_total not a number\n"


def test_offers_none_of_which_can_be_checked_are_refused(fake, tmp_path):
    fake.answer_offers = [{k: v for k, v in o.items() if k != "dph_total"} for o in OFFERS[:2]]
    proc = cli(fake, "offers", "--gpu", "RTX_4090")
    assert proc.returncode == 2 and proc.stderr == (
        "error: Vast offers: GET /bundles/: no offer can be checked against the filter "
        "(skipped 2 of 2 offers Vast returned: 2 missing dph_total)\n"
    )
    proc = cli(fake, "up", str(SPACES / "e2e.yaml"), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "no offer can be checked" in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists() and not fake.instances


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("12345678", "--instance 12345678: not an instance of this launch"),  # a real id: past a count's bound
        ("abc", "--instance: expected an instance id (digits, 1 to 9007199254740992), got 'abc'"),
        ("-4", "--instance: expected an instance id"),
        ("9" * 30, "--instance: expected an instance id"),
        ("1e5", "--instance: expected an instance id"),
    ],
)
def test_an_instance_id_on_the_command_line_is_checked(fake, tmp_path, value, message):
    out = tmp_path / "run"
    out.mkdir()
    (out / "launch.json").write_text(json.dumps({"label": "himari-x", "study": "e2e", "instances": {}}))
    proc = cli(fake, "logs", str(out), "--instance", value)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not fake.requests


def test_a_label_that_prefixes_another_launch_destroys_only_its_own(fake, tmp_path):
    client = VastClient(KEY, base_url=fake.url)
    ours = client.create_instance(11, "img", 30, "sleep 60", "himari-a-0", env={})
    theirs = client.create_instance(12, "img", 30, "sleep 60", "himari-a-b-0", env={})
    out = tmp_path / "run"
    out.mkdir()
    (out / "launch.json").write_text(json.dumps({"label": "himari-a", "study": "e2e", "instances": {}}))
    assert manage.down(out, client, echo=lambda _: None) == 0
    assert list(fake.instances) == [theirs] and ours not in fake.instances


def test_the_ledger_cuts_a_half_written_last_line_before_appending(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.record("created", 7000, gpu="RTX 4090", num_gpus=1, dph=0.35)
    with ledger.path.open("a") as f:
        f.write('{"time": 2.0, "event": "destr')  # what a SIGKILL mid-write leaves
    assert [e["event"] for e in ledger.events()] == ["created"]  # the cut line is not read
    ledger.record("destroyed", 7000)
    assert [e["event"] for e in ledger.events()] == ["created", "destroyed"]
    assert ledger.destroyed() == {7000}


def test_vast_up_into_an_empty_dir_that_fails_leaves_it_empty(fake, tmp_path):
    fake.offers[0]["_stuck"] = True
    out = tmp_path / "run"
    out.mkdir()
    proc = cli(
        fake, "up", str(SPACES / "e2e.yaml"), "--out", str(out), "--gpu", "RTX_4090", "--filter", "num_gpus<=1",
        "--ready-timeout", "1",
    )  # fmt: skip
    assert proc.returncode == 2 and "not ready after 1 s" in proc.stderr, proc.stderr
    assert out.is_dir() and not list(out.iterdir()) and not fake.instances
    assert f"{out}: emptied: nothing ran and nothing bills" in proc.stdout
