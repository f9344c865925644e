"""`vast up` with a box that runs: tests/fake_vast.py's LocalBox, the on-start script as local processes.
offers -> create -> ready -> run -> pull -> destroy with a real Ray and a real search on the "box", and a
box dying mid-search destroyed with its trials failed (slow); an install that fails ends the launch in one
line and destroys the box; SSHBox's quoting and tar pull against a stand-in `ssh`. The API key never
reaches output or files."""

from __future__ import annotations

import os
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from himari_ray.launch import manage
from himari_ray.launch.launcher import LaunchConfig, up
from himari_ray.launch.offers import OfferFilter
from himari_ray.launch.vast import VastClient
from himari_ray.report.cost import search_cost
from himari_ray.types import UserInputError, open_storage
from tests.fake_vast import LocalBox
from tests.vast_kit import KEY, SPACES, assert_key_nowhere, free_port

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


# --- the on-start failing, and the SSH transport (fast: no Ray) ------------------------------------------


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
