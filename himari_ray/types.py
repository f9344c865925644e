"""Core vocabulary shared by every layer: regimes, actions, the dataset contract (ARCHITECTURE §2.1).

Nothing here imports from the rest of the package.
"""

from __future__ import annotations

import enum
import re
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict


class Regime(enum.IntEnum):
    """Market regime ids, as the seed's detector numbers them."""

    LOW_VOL = 0
    TRENDING = 1
    HIGH_VOL = 2
    CRISIS = 3


class Action(enum.IntEnum):
    """Discrete actions; HOLD means flat."""

    HOLD = 0
    LONG = 1
    SHORT = 2


REGIME_NAMES: tuple[str, ...] = tuple(r.name for r in Regime)
ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in Action)
N_REGIMES = len(Regime)
N_ACTIONS = len(Action)

#: Position (+1 long, -1 short, 0 flat) taken by each action id.
POSITION_OF_ACTION = np.array([0, 1, -1], dtype=np.int8)

#: Annualisation factor for hourly bars.
BARS_PER_YEAR = 8760

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SplitArrays:
    """One chronological split: aligned arrays of length n (ARCHITECTURE §2.1).

    `returns[t] = prices[t] / prices[t-1] - 1` is the return *of* bar t, known once bar t has closed.
    Everything at index t (features, regime) is computed from bars <= t only.
    """

    features: np.ndarray  # float32 (n, F), raw (not normalised)
    regime_ids: np.ndarray  # int64 (n,)
    regime_confidences: np.ndarray  # float32 (n,)
    prices: np.ndarray  # float64 (n,)
    returns: np.ndarray  # float64 (n,)
    timestamps: np.ndarray  # int64 ns since epoch, UTC (n,)
    #: bool (n,): a decision at bar t may earn returns[t+1] (bars t and t+1 real and one hour apart).
    #: False around exchange outages (see himari_ray.data.ohlcv); None means every bar is tradable.
    tradable: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.returns)
        if self.tradable is None:
            object.__setattr__(self, "tradable", np.ones(n, dtype=bool))
        for name in ("features", "regime_ids", "regime_confidences", "prices", "timestamps", "tradable"):
            arr = getattr(self, name)
            if len(arr) != n:
                raise ValueError(f"SplitArrays.{name} has length {len(arr)}, expected {n}")
        if self.features.ndim != 2:
            raise ValueError(f"SplitArrays.features must be 2-D, got shape {self.features.shape}")

    def __len__(self) -> int:
        return len(self.returns)


@dataclass(frozen=True)
class FeatureScaler:
    """Per-feature z-score statistics, fitted on the train split only (ARCHITECTURE §2.1)."""

    mean: np.ndarray  # float64 (F,)
    std: np.ndarray  # float64 (F,), strictly positive
    clip: float = 10.0

    @classmethod
    def fit(cls, train_features: np.ndarray, clip: float = 10.0) -> FeatureScaler:
        """Fit on train features; a constant column gets std 1 so it maps to 0, not to inf."""
        x = np.asarray(train_features, dtype=np.float64)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(mean=mean, std=std, clip=clip)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Scale any split with the train statistics; clipped so a fat-tailed outlier cannot blow up a step."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.std
        return np.clip(z, -self.clip, self.clip).astype(np.float32)


@dataclass(frozen=True)
class Dataset:
    """Three chronological, non-overlapping splits plus metadata (ARCHITECTURE §2.1)."""

    train: SplitArrays
    val: SplitArrays
    test: SplitArrays
    feature_names: tuple[str, ...]
    scaler: FeatureScaler
    metadata: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> SplitArrays:
        """The split called `name` (train, val or test)."""
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        return getattr(self, name)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)


#: Field markers (pydantic `json_schema_extra`) that route names: a `SEARCHABLE` field of a trial config may be
#: searched in a space (it lands in the config that defines it); an `ENV_SECTION` field is a key of a space's
#: `env:` section. One definition per name, and `with_params`, the space's env section and its allowed names
#: are all derived from them (`rl.config.ROUTES`, `search.space.ENV_SECTION_SOURCES`).
SEARCHABLE, ENV_SECTION = "searchable", "env_section"


def flagged(model: type, flag: str) -> tuple[str, ...]:
    """The fields of a pydantic model class that carry `flag` in their `json_schema_extra`."""
    return tuple(name for name, f in model.model_fields.items() if (f.json_schema_extra or {}).get(flag))


class StrictModel(BaseModel):
    """The base of every typed, frozen config: immutable, unknown keys refused, no NaN or infinity."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


#: Hard upper bounds of counts and seeds, for flags and config fields alike: a count beyond MAX_COUNT is a typo,
#: not a plan, and a seed must fit the 32 bits numpy takes.
MAX_COUNT = 100_000
MAX_SEED = 2**32 - 1


class UserInputError(Exception):
    """Bad input from the user (a file, a key, a flag). The CLI prints it as one line and exits 2."""


class SearchInterrupted(Exception):
    """The search stopped on Ctrl-C or SIGTERM with its state saved; the CLI prints how to resume, exit 130."""


class SearchFailed(Exception):
    """The search ran but no trial trained (every one crashed, or was skipped); one line why, exit 1."""


def no_json_constant(name: str) -> Any:
    """`json.loads`' parse_constant for files we write: NaN and Infinity are never ours, so they are refused."""
    raise ValueError(name)


#: Vast's ids are decimal integers; one past JSON's exact integers (2**53) is no id we ever rented.
MAX_ID = 2**53


def valid_id(value: Any) -> int | None:
    """`value` as a Vast id (an offer's, an instance's) if it is one: a positive integer, or its decimal
    digits in a string (JSON object keys are strings); None otherwise (a bool, a float, a word, 0, -3)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value <= MAX_ID else None


#: The study database inside a search directory when no --storage URL was given.
STUDY_FILE = "study.db"
#: In every trial checkpoint: {"iteration": n, "best": {best_iteration, ...}} (written by rl/trainable.py).
TRIAL_STATE_FILE = "himari_trial_state.json"


def trial_number(experiment_tag: str) -> int:
    """Tune's per-search trial counter, the prefix of a trial's experiment tag (`<n>_<params>`)."""
    return int(experiment_tag.split("_", 1)[0])


#: Most characters of user data one error message quotes: a whole file squeezed into one line helps nobody.
QUOTE_LIMIT = 80


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` on one line (whitespace runs become one space), cut to `limit` characters with how long it was."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    return f"{flat[: max(limit - 1, 1)]}… ({len(flat)} characters)"


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)` for an error message, cut like `shorten`: user data quoted in a `UserInputError`."""
    return shorten(repr(value), limit)


#: What a secret is replaced by wherever it would be printed or written.
SECRET_MASK = "***"

#: A URL as it appears in free text (an error message, a command line): up to the next whitespace.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
#: Query parameters that carry credentials in SQLAlchemy and driver URLs (`?password=...`).
_SECRET_QUERY = re.compile(r"(?i)([?&;](?:password|passwd|pwd|token|secret|api_key|apikey|sslpassword)=)[^&;\s]*")


def _userinfo_end(rest: str) -> int:
    """Where the `user:password` part of a URL's remainder (after `://`) ends, or -1 where it has none. It
    ends at the last '@': a password may hold '@', ':' or '/' a user forgot to percent-encode. A path
    (sqlite:///dir/a@b.db) starts with '/', and a user without password (u@h/a@b) has no ':' before a '/'."""
    at = rest.rfind("@")
    if at <= 0 or rest.startswith("/"):
        return -1
    colon, slash = rest.find(":", 0, at), rest.find("/", 0, at)
    return at if colon > 0 and (slash < 0 or colon < slash) else -1


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    at = _userinfo_end(rest)
    if at > 0:
        rest = f"{rest[: rest.index(':')]}:{SECRET_MASK}{rest[at:]}"
    return _SECRET_QUERY.sub(lambda m: m.group(1) + SECRET_MASK, scheme + sep + rest)


def redact(text: str) -> str:
    """`text` with the password of every URL in it masked (`scheme://user:***@host/db`, `?password=***`)."""
    return _URL_IN_TEXT.sub(lambda m: _redact_one(m.group(0)), str(text))


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL (its password and credential query values), raw and percent-decoded, so a
    message that quotes one of them on its own (a driver's error) can be scrubbed too."""
    found: list[str] = []
    rest = url.partition("://")[2]
    at = _userinfo_end(rest)
    if at > 0:
        found.append(rest[rest.index(":") + 1 : at])
    found += [m.group(0).split("=", 1)[1] for m in _SECRET_QUERY.finditer(url)]
    found = [s for s in found if s and s != SECRET_MASK]
    return sorted({*found, *(urllib.parse.unquote(s) for s in found)}, key=len, reverse=True)


def scrub(text: str, *secrets: str) -> str:
    """`text` with every URL redacted and each of `secrets` (a key, a password) replaced by the mask."""
    out = redact(text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, SECRET_MASK)
    return out


def is_redacted(url: str) -> bool:
    """Whether a stored URL had a secret masked out of it (it cannot be opened as it is)."""
    return redact(url) == url and SECRET_MASK in url


def open_storage(url: str, flag: str = "--storage", attempts: int = 5, grpc_wait_s: float | None = None) -> Any:
    """An RDB storage for `url` (SQLite, PostgreSQL, ... any SQLAlchemy URL), or an Optuna gRPC storage proxy
    for `grpc://host:port` (how rented boxes reach one study through an SSH tunnel), or one line saying why not.

    Two drivers opening a fresh study database at once race to create its schema and one of them fails
    (a UNIQUE constraint on the schema version); by the next attempt the other has created it."""
    import optuna

    if url.startswith("grpc://"):
        return _grpc_proxy(url, flag, timeout=10.0 * attempts if grpc_wait_s is None else grpc_wait_s)
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if "sqlite" not in url else {})
        except Exception as exc:  # SQLAlchemy and drivers raise many types; the message is what the user needs
            if attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # Drivers quote the URL, or the password alone, in their errors: neither may reach the terminal.
            first = scrub(first, *url_secrets(url))
            raise UserInputError(f"{flag} {redact(url)}: cannot open the study storage ({first})") from None
    raise AssertionError("unreachable")


def _grpc_proxy(url: str, flag: str, timeout: float) -> Any:
    import optuna

    host, _, port = url.removeprefix("grpc://").rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise UserInputError(f"{flag} {redact(url)}: expected grpc://HOST:PORT")
    try:
        with warnings.catch_warnings():  # "experimental since 4.2": known, and not the user's to act on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            proxy = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
        proxy.wait_server_ready(timeout=timeout)
    except ImportError:
        raise UserInputError(
            f"{flag} {redact(url)}: the gRPC storage proxy needs grpcio (pip install grpcio)"
        ) from None
    except ConnectionError:
        raise UserInputError(
            f"{flag} {redact(url)}: no Optuna storage proxy answers there within {timeout:.0f} s"
        ) from None
    return proxy
