"""What the `vast` fuzz tests share: a working directory as cwd and HOME, the fake Vast reset between
examples, `vast` run in process, a launch directory as `up` leaves it, wrong values of every kind, and the
check that the API key is in no output, file or request path (the fake itself is conftest.py's `fuzz_vast`)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pytest
from hypothesis import strategies as st

from himari_ray.launch.ledger import Ledger
from himari_ray.launch.state import LaunchState
from tests.fake_vast import FakeVast
from tests.test_fuzz import run
from tests.vast_kit import KEY


def reset(fake: FakeVast, offers: list[dict] | None = None) -> None:
    """The fake as new: these offers (none by default), no instance, no request seen, nothing overridden."""
    fake.offers[:] = [dict(o) for o in (offers or [])]
    fake.answer_offers = None
    fake.fail_next = 0
    fake.requests.clear()
    for iid in list(fake.instances):
        fake._kill(iid)
        fake.instances.pop(iid, None)


def key_nowhere(root: Path, *texts: str, fake: FakeVast | None = None) -> None:
    for text in texts:
        assert KEY not in text, text
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.name != "vast_api_key":
            assert KEY.encode() not in p.read_bytes(), p
    if fake is not None:
        assert all(KEY not in path for _, path, _ in fake.requests)  # only ever in the Authorization header


@contextlib.contextmanager
def workdir(url: str, key: str | None = KEY):
    """A fresh directory as cwd and HOME (no key file of the user's), VAST_URL and VAST_API_KEY set."""
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", d)
        mp.setenv("VAST_URL", url)
        if key is None:
            mp.delenv("VAST_API_KEY", raising=False)
        else:
            mp.setenv("VAST_API_KEY", key)
        yield Path(d)


def vast_cmd(root: Path, *args: str) -> tuple[int, str, str]:
    return run(["vast", *args], root)


IID = 7000
LABEL = "himari-0a1b2c3d"


def real_launch(root: Path, ended: bool = True) -> Path:
    """A launch directory as `up` leaves it after a search ended (or, `ended=False`, as one killed while its
    instance ran leaves it): launch.json and a ledger of every event."""
    out = root / "launch"
    out.mkdir()
    info = {"label": f"{LABEL}-0", "offer": 11, "gpu": "RTX 4090", "num_gpus": 1, "dph": 0.35}
    LaunchState(out, {"label": LABEL, "space": "e2e", "study": "e2e", "instances": {str(IID): info}}).save()
    ledger = Ledger(out)
    ledger.record("created", IID, offer=11, gpu="RTX 4090", num_gpus=1, dph=0.35)
    ledger.record("ready", IID)
    if ended:
        ledger.record("trials", finished=2)
        ledger.record("destroyed", IID, reason="finished")
        ledger.record("down")
    return out


NASTY = st.one_of(
    st.sampled_from([None, True, False, -1, 0, 1.5, -0.0, 1e308, 10**40, "", "abc", "7000", [], {}, [7000], {"a": 1}]),
    st.text(max_size=20),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
