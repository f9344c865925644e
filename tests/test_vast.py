"""`himari-ray vast` against a local fake of Vast's HTTP API (tests/fake_vast.py): offers -> create ->
ready -> run -> pull -> destroy with a real Ray and a real search on the "box", and every failure leaves no
instance of ours behind. The API key never reaches output or files."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from himari_ray.launch import manage
from himari_ray.launch.launcher import LaunchConfig, find_offers, up
from himari_ray.launch.ledger import Ledger
from himari_ray.launch.offers import OfferFilter, parse_filter
from himari_ray.launch.vast import VastClient, VastError
from himari_ray.report.cost import search_cost
from himari_ray.types import UserInputError, open_storage
from tests.fake_vast import FakeVast, LocalBox

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "tests" / "spaces"
KEY = "vk-0123456789abcdef-SECRET"

OFFERS = [
    {"id": 11, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": 0.35, "reliability2": 0.99, "disk_space": 80.0,
     "gpu_ram": 24564, "rentable": True, "rented": False, "verified": True, "geolocation": "Norway"},
    {"id": 12, "gpu_name": "RTX 4090", "num_gpus": 2, "dph_total": 0.71, "reliability2": 0.995, "disk_space": 120.0,
     "gpu_ram": 24564, "rentable": True, "rented": False, "verified": True, "geolocation": "Canada"},
    {"id": 13, "gpu_name": "H100 SXM", "num_gpus": 1, "dph_total": 2.10, "reliability2": 0.999, "disk_space": 200.0,
     "gpu_ram": 81559, "rentable": True, "rented": False, "verified": True, "geolocation": "US"},
    {"id": 14, "gpu_name": "RTX 3090", "num_gpus": 1, "dph_total": 0.15, "reliability2": 0.80, "disk_space": 40.0,
     "gpu_ram": 24576, "rentable": True, "rented": False, "verified": True, "geolocation": "Vietnam"},
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    offers = [dict(o) for o in OFFERS]
    f = FakeVast(tmp_path / "vast", offers, KEY, box_env=box_env)
    yield f
    f.stop()


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


def assert_key_nowhere(*texts: str, dirs: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert KEY not in text
    for d in dirs:
        for p in d.rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert KEY.encode() not in p.read_bytes(), p


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


# --- the whole flow, and a box lost mid-search (slow: real Ray and a real search on the box) -----------------


def launch_config(storage: str, trials: int, **kw) -> LaunchConfig:
    return LaunchConfig(
        space=str(SPACES / "e2e.yaml"), instances=1, trials=trials, seed=0, storage=storage, install=":",
        ready_timeout_s=120, poll_s=1.0, box_proxy_port=free_port(), ray_port=free_port(), **kw,
    )  # fmt: skip


@pytest.mark.slow
def test_offers_create_ready_run_pull_destroy(fake, tmp_path, box_env):
    out = tmp_path / "run"
    lines: list[str] = []
    client = VastClient(KEY, base_url=fake.url)

    def connect(inst):
        return LocalBox(inst, box_env)

    cfg = launch_config(f"sqlite:///{tmp_path / 'study.db'}", trials=2, keep=True)

    def echo(line: str) -> None:
        lines.append(line)
        if line.endswith("ready (local box box-7000)"):
            fake.fail_next = 3  # the API stumbles while the box searches: the launch sits it out

    rc = up(cfg, OfferFilter(gpu_name="RTX 4090", max_gpus=1), out, client, connect, echo=echo)
    assert sum("HTTP 503: try again later (try" in x for x in lines) == 3
    assert rc == 0, "\n".join(lines)
    (iid,) = fake.instances  # kept (--keep): status/logs/pull/down next
    box = fake.instances[iid]["dir"]
    label = fake.instances[iid]["label"]
    trials = sorted((out / "boxes" / label / "tune").glob("trial_*/result.json"))
    assert len(trials) == 2  # pulled
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2  # the box searched into our study
    assert (box / ".ray" / "auth_token").is_file()  # its Ray ran with a token
    assert "ray start --head" in (box / "onstart.sh").read_text()
    # The box's final table read the study through the gRPC proxy (importance included), not SQLAlchemy.
    log = (box / "himari" / "search.log").read_text()
    assert "parameter importance: needs at least 4 complete trials in the study, it has 2" in log

    for fn in (manage.status, manage.logs, manage.pull):
        got: list[str] = []
        assert fn(out, client, connect, echo=got.append) == 0
        lines += got
    assert "searching" in "\n".join(lines) or "done 0" in "\n".join(lines)
    assert manage.down(out, client, echo=lines.append) == 0
    assert not fake.instances
    cost = search_cost(out)
    assert cost is not None and cost.trials == 2 and not any(i.running for i in cost.instances)
    assert cost.dollars == pytest.approx(0.35 * cost.instances[0].hours)
    print("\n" + "\n".join(lines))
    token = (box / ".ray" / "auth_token").read_text().strip()
    logs = "\n".join(lines)
    assert token not in logs and token not in (box / "himari" / "onstart.log").read_text()
    assert_key_nowhere(logs, dirs=(out, box))


@pytest.mark.slow
def test_a_box_dying_mid_search_is_destroyed_and_its_trials_failed(fake, tmp_path, box_env):
    out = tmp_path / "run"
    url = f"sqlite:///{tmp_path / 'study.db'}"
    lines: list[str] = []
    result: dict[str, int] = {}
    cfg = launch_config(url, trials=2)

    def run() -> None:
        client = VastClient(KEY, base_url=fake.url)
        result["rc"] = up(
            cfg, OfferFilter(gpu_name="RTX 4090", max_gpus=1), out, client, lambda i: LocalBox(i, box_env), lines.append
        )

    launcher = threading.Thread(target=run)
    launcher.start()
    deadline = time.monotonic() + 180
    killed = False
    while time.monotonic() < deadline and launcher.is_alive() and not killed:
        if (tmp_path / "study.db").exists():
            try:
                running = [  # a trial is the box's once its search tagged it (a moment after creating it)
                    t
                    # open_storage retries the race with the launcher creating the study's tables
                    for t in optuna.load_study(study_name="e2e", storage=open_storage(url)).get_trials(
                        states=(TrialState.RUNNING,)
                    )
                    if "himari_search" in t.user_attrs
                ]
            except KeyError:  # no study yet
                running = []
            if len(running) == 2 and fake.instances:  # both trials exist: none can start untagged after the kill
                fake.die(next(iter(fake.instances)))
                killed = True
        time.sleep(0.5)
    launcher.join(timeout=120)
    print("\n".join(lines))
    assert killed and not launcher.is_alive()
    assert result["rc"] == 1
    assert any("lost mid-search (Vast status exited)" in x for x in lines)
    assert not fake.instances
    states = [t.state for t in optuna.load_study(study_name="e2e", storage=url).trials]
    assert states == [TrialState.FAIL] * 2
    cost = search_cost(out)
    assert cost is not None and not any(i.running for i in cost.instances)


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


def test_ssh_box_runs_commands_as_sshd_would_and_pulls_with_tar(tmp_path, monkeypatch):
    """SSHBox against a stand-in `ssh` that does what sshd does with a command: hand the joined words to
    the login shell's -c in the user's home. Checks our quoting survives that, and the tar pull."""
    from himari_ray.launch.box import SSHBox

    home, bin_dir = tmp_path / "root", tmp_path / "bin"
    (home / "himari" / "runs" / "l" / "tune").mkdir(parents=True)
    (home / "himari" / "runs" / "l" / "tune" / "result.json").write_text('{"it": 1}\n')
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "args, i = sys.argv[1:], 0\n"
        "while args[i].startswith('-'):\n"
        "    i += 2 if args[i] in ('-o', '-p', '-i', '-R', '-L') else 1\n"
        "open(os.environ['SSH_LOG'], 'a').write(args[i] + '\\n')\n"
        "os.chdir(os.environ['FAKE_HOME'])\n"
        "os.execvpe('bash', ['bash', '-c', ' '.join(args[i + 1:])], {**os.environ, 'HOME': os.environ['FAKE_HOME']})\n"
    )
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_HOME", str(home))
    monkeypatch.setenv("SSH_LOG", str(tmp_path / "ssh.log"))
    box = SSHBox("ssh4.vast.example", 41022)
    res = box.run("""echo "it's $HOME" && cd ~/himari && ls runs | tr a-z A-Z""")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"it's {home}", "L"]
    box.pull("himari/runs/l", tmp_path / "local")
    assert (tmp_path / "local" / "tune" / "result.json").read_text() == '{"it": 1}\n'
    assert set((tmp_path / "ssh.log").read_text().split()) == {"root@ssh4.vast.example"}
    assert box.run("exit 3").returncode == 3


def test_a_failing_install_ends_the_launch_in_one_line_and_destroys_the_box(fake, tmp_path, box_env):
    client = VastClient(KEY, base_url=fake.url)
    cfg = launch_config(f"sqlite:///{tmp_path / 'study.db'}", trials=1).model_copy(
        update={"install": "echo 'no matching distribution for himari-ray' >&2; false"}
    )
    lines: list[str] = []
    with pytest.raises(UserInputError) as err:
        up(cfg, OfferFilter(), tmp_path / "run", client, lambda i: LocalBox(i, box_env), lines.append)
    assert "on-start failed install (no matching distribution for himari-ray); all instances destroyed" in str(
        err.value
    )
    assert not fake.instances and any(x.endswith("destroyed (launch failed)") for x in lines)
    assert not (tmp_path / "run").exists() and lines[-1].endswith("removed: nothing ran and nothing bills")


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
