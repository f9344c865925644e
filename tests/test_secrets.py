"""No password or API key reaches stdout, stderr or a written file, for every command that takes a storage URL
(`search`, `search --resume`, `vast up`) or a Vast key (every `vast` subcommand). Fast: each refusal comes
before Ray starts."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from himari_ray.search.driver import resume_storage_url
from himari_ray.types import UserInputError, is_redacted, open_storage, redact, scrub, url_secrets
from tests.fake_vast import FakeVast

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "tests" / "spaces"
PASSWORD = "Pa55-w0rd@with:odd/chars"  # an '@' and ':' a user forgot to percent-encode
URL = f"postgresql://alice:{PASSWORD}@127.0.0.1:1/himari"
KEY = "vk-0123456789abcdef-SECRET"


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "himari_ray", *args], capture_output=True, text=True, cwd=cwd, env=full, timeout=120
    )


def assert_nowhere(secret: str, proc: subprocess.CompletedProcess, *dirs: Path) -> None:
    """The secret (or its distinctive part) is neither printed nor in any file under `dirs`."""
    needles = {secret, secret.split("@")[0]}
    for text in (proc.stdout, proc.stderr):
        for needle in needles:
            assert needle not in text, text
    for d in dirs:
        for p in d.rglob("*"):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                for needle in needles:
                    assert needle.encode() not in data, p


# --- the redactor ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@db.example/x", "postgresql://u:***@db.example/x"),
        ("mysql+pymysql://u:p@ss:w@h:3306/x", "mysql+pymysql://u:***@h:3306/x"),
        ("postgresql://h/x?user=u&password=pw&sslmode=require", "postgresql://h/x?user=u&password=***&sslmode=require"),
        ("postgresql://u@h/x", "postgresql://u@h/x"),  # no password: nothing to hide
        ("sqlite:////tmp/a@b:c/study.db", "sqlite:////tmp/a@b:c/study.db"),  # a path, not userinfo
        ("grpc://127.0.0.1:50051", "grpc://127.0.0.1:50051"),
    ],
)
def test_redact_masks_exactly_the_password(url, shown):
    assert redact(url) == shown
    assert redact(f"--storage {url}: cannot open") == f"--storage {shown}: cannot open"
    assert is_redacted(shown) == (shown != url)


def test_url_secrets_and_scrub_catch_a_password_quoted_alone():
    secrets = url_secrets("postgresql://u:p%40ss@h/x")
    assert "p%40ss" in secrets and "p@ss" in secrets
    assert scrub("auth failed for p@ss", *secrets) == "auth failed for ***"


def test_open_storage_error_names_the_flag_not_the_password():
    with pytest.raises(UserInputError) as err:
        open_storage(URL, attempts=1)
    assert PASSWORD not in str(err.value) and "alice:***@127.0.0.1:1" in str(err.value)
    # SQLAlchemy's own parse error quotes the whole string it could not read.
    with pytest.raises(UserInputError) as err:
        open_storage(f"postgresql://alice:{PASSWORD}@127.0.0.1:notaport/db", attempts=1)
    assert PASSWORD not in str(err.value)


# --- search, search --resume -------------------------------------------------------------------------------


def test_search_with_an_unreachable_password_storage_prints_and_writes_no_password(tmp_path):
    proc = run("search", str(SPACES / "e2e.yaml"), "--out", str(tmp_path / "out"), "--storage", URL, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--storage postgresql://alice:***@" in proc.stderr
    assert_nowhere(PASSWORD, proc, tmp_path)


def test_resume_takes_the_storage_again_and_refuses_another_or_a_missing_password():
    kept = redact(URL)
    assert resume_storage_url(kept, URL) == URL  # the same study, password given again
    with pytest.raises(UserInputError, match="without its password") as err:
        resume_storage_url(kept, None)
    assert PASSWORD not in str(err.value)
    with pytest.raises(UserInputError, match="not this search's study storage") as err:
        resume_storage_url(kept, URL.replace("himari", "other"))
    assert PASSWORD not in str(err.value)
    with pytest.raises(UserInputError, match=r"its own study\.db"):
        resume_storage_url(None, URL)
    assert resume_storage_url("postgresql://u@h/x", None) == "postgresql://u@h/x"  # PGPASSWORD's way


def test_resume_with_storage_of_a_non_search_is_one_line_without_the_password(tmp_path):
    (tmp_path / "notasearch").mkdir()
    proc = run("search", "--resume", str(tmp_path / "notasearch"), "--storage", URL, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert_nowhere(PASSWORD, proc, tmp_path)


def test_the_pickled_searcher_keeps_no_password(tmp_path):
    from himari_ray.search.study import PruningOptunaSearch

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    searcher = PruningOptunaSearch(
        space={"x": optuna.distributions.FloatDistribution(0, 1)},
        metric="objective",
        mode="min",
        storage=storage,
        study_name="s",
        max_iterations=1,
        owner="o",
    )
    storage.url = URL  # what an external study's storage holds: Tune pickles the searcher to disk
    assert PASSWORD.encode() not in pickle.dumps(searcher)


def test_ray_records_the_driver_command_line_redacted():
    """Ray keeps the driver's /proc command line as the job's entrypoint (GCS, dashboard, logs)."""
    code = (
        "import ray._private.utils as u; from himari_ray.search.ray_session import redact_ray_entrypoint; "
        "redact_ray_entrypoint(); print(u.get_entrypoint_name())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--storage", URL],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "alice:***@127.0.0.1:1" in proc.stdout and PASSWORD not in proc.stdout


# --- vast: the storage URL and the API key ------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path):
    f = FakeVast(tmp_path / "vast", [], KEY)
    yield f
    f.stop()


def vast(fake: FakeVast, tmp_path: Path, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {"VAST_URL": fake.url, "HOME": str(tmp_path / "home")}
    if key is not None:
        env["VAST_API_KEY"] = key
    elif "VAST_API_KEY" in os.environ:
        env["VAST_API_KEY"] = ""
    return run("vast", *args, cwd=tmp_path, env=env)


def test_vast_up_with_an_unreachable_password_storage_prints_and_writes_no_password(fake, tmp_path):
    out = tmp_path / "launch"
    proc = vast(fake, tmp_path, "up", str(SPACES / "e2e.yaml"), "--out", str(out), "--storage", URL)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "alice:***@" in proc.stderr
    assert_nowhere(PASSWORD, proc, tmp_path)
    assert not fake.instances


def test_vast_status_of_a_launch_with_a_redacted_storage_says_so(tmp_path):
    from himari_ray.launch import manage
    from himari_ray.launch.vast import VastClient

    out = tmp_path / "launch"
    out.mkdir()
    state = {"label": "l", "space": "e2e", "study": "e2e", "instances": {}, "storage": redact(URL)}
    (out / "launch.json").write_text(json.dumps(state))
    lines: list[str] = []

    class NoInstances(VastClient):
        def instances(self) -> list[dict]:
            return []

    assert manage.status(out, NoInstances(KEY), echo=lines.append) == 0
    assert any("not counted" in line and "alice:***@" in line for line in lines), lines


def assert_key_refused(proc: subprocess.CompletedProcess, fake: FakeVast) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "whitespace or control characters" in lines[0], proc.stderr
    for part in (KEY, KEY[:8], KEY[8:]):
        assert part not in proc.stdout + proc.stderr
    assert not fake.requests  # refused before any request carried it


BAD_KEYS = [KEY + "\nX-Evil: 1", KEY[:8] + " " + KEY[8:], KEY + "\x00"]


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_a_key_file_with_whitespace_or_control_inside_is_one_line_that_never_quotes_it(fake, tmp_path, bad):
    keyfile = tmp_path / "home" / ".config" / "vastai" / "vast_api_key"
    keyfile.parent.mkdir(parents=True)
    keyfile.write_bytes(bad.encode() + b"\n")  # the trailing newline alone is stripped, as editors add it
    assert_key_refused(vast(fake, tmp_path, "offers", key=None), fake)


@pytest.mark.parametrize(
    ("command", "bad"),
    # An environment variable cannot hold NUL; one bad key is enough for the commands past offers.
    [("offers", BAD_KEYS[0]), ("offers", BAD_KEYS[1]), *((c, BAD_KEYS[0]) for c in ("status", "logs", "pull", "down"))],
)
def test_a_key_in_the_environment_with_whitespace_inside_is_refused_by_every_vast_command(fake, tmp_path, command, bad):
    out = tmp_path / "launch"
    out.mkdir()
    (out / "launch.json").write_text(json.dumps({"label": "l", "space": "e2e", "study": "e2e", "instances": {}}))
    args = [command] if command == "offers" else [command, str(out)]
    assert_key_refused(vast(fake, tmp_path, *args, key=bad), fake)


def test_a_binary_key_file_is_one_line(fake, tmp_path):
    keyfile = tmp_path / "home" / ".config" / "vastai" / "vast_api_key"
    keyfile.parent.mkdir(parents=True)
    keyfile.write_bytes(b"\xff\xfe" + KEY.encode() + b"\x00\x81")
    proc = vast(fake, tmp_path, "offers", key=None)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "not plain text" in proc.stderr and KEY not in proc.stderr


def test_a_server_that_echoes_the_key_has_it_scrubbed(fake, tmp_path):
    """An error body quoting the Authorization header (a misconfigured proxy) reaches the user scrubbed."""
    original = fake.route

    def echoing(method, path, body):
        return 500, {"msg": f"bad header Bearer {KEY}"}

    fake.route = echoing
    try:
        proc = vast(fake, tmp_path, "offers")
    finally:
        fake.route = original
    assert proc.returncode == 2 and "HTTP 500" in proc.stderr, proc.stderr
    assert KEY not in proc.stdout + proc.stderr
