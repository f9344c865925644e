"""Where a multi-node search keeps its trials while they run (`--tune-storage`), and their copy into the
search directory at the end."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from himari_ray.types import UserInputError, redact, scrub, url_secrets

#: URI schemes Tune's storage_path takes through pyarrow (object stores and cluster file systems).
TUNE_STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "az")


def check_tune_storage(uri: str | None, out: Path) -> str | None:
    """Where Tune keeps trials and checkpoints when the search directory is not on storage every node
    reaches: an object-store URI (s3://bucket/prefix) or an absolute directory of a shared file system.
    One line naming --tune-storage when it cannot be."""
    if uri is None:
        return None
    if "://" in uri:
        scheme = uri.split("://", 1)[0].lower()
        if scheme not in TUNE_STORAGE_SCHEMES or not uri.split("://", 1)[1].strip("/"):
            raise UserInputError(
                f"--tune-storage {uri!r}: expected an absolute directory or a URI with a bucket "
                f"({', '.join(s + '://' for s in TUNE_STORAGE_SCHEMES)})"
            )
        return uri.rstrip("/")
    path = Path(uri)
    if not path.is_absolute():
        raise UserInputError(f"--tune-storage {uri!r}: a directory must be absolute (every node resolves it alike)")
    if path.resolve().is_relative_to(out.resolve()):
        raise UserInputError(f"--tune-storage {uri!r}: must lie outside --out (the search directory mirrors it)")
    return str(path)


def mirror_trials(remote: str, out: Path) -> None:
    """Copy the Tune experiment from its storage into `out/tune`, so analyze, report, confirm and export read
    the search directory alone. Copies only; the remote experiment stays as Tune left it."""
    import pyarrow.fs as pafs

    local = out / "tune"
    local.mkdir(parents=True, exist_ok=True)
    if "://" in remote:
        fs, root = pafs.FileSystem.from_uri(remote)
    else:
        fs, root = pafs.LocalFileSystem(), remote
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return  # nothing was written (a search refused before its first trial)
    pafs.copy_files(root, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


#: Optuna's table of studies (its RDB schema since 1.0): a database without it holds no study.
STUDIES_TABLE = "studies"
#: Every table Optuna's RDB schema creates: a database holding any of them is, or is becoming, a study storage.
OPTUNA_TABLES = frozenset(
    {
        STUDIES_TABLE, "version_info", "alembic_version", "study_directions", "study_user_attributes",
        "study_system_attributes", "trials", "trial_params", "trial_values", "trial_intermediate_values",
        "trial_user_attributes", "trial_system_attributes", "trial_heartbeats",
    }
)  # fmt: skip


def _read_storage(url: str, flag: str) -> tuple[bool, set[str], set[str] | None]:
    """What a study storage holds, read without writing: whether the database exists at all (a SQLite file
    that is missing or empty does not), its tables, and its study names (None: no Optuna tables). SQLite files
    are opened read-only; other databases through read-only queries."""
    if url.startswith("sqlite:"):
        path = url.partition(":///")[2].partition("?")[0]
        if not path or path == ":memory:" or not Path(path).is_file() or Path(path).stat().st_size == 0:
            return False, set(), None
        try:
            with sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True) as db:
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if STUDIES_TABLE not in tables:
                    return True, tables, None
                return True, tables, {row[0] for row in db.execute(f"SELECT study_name FROM {STUDIES_TABLE}")}
        except sqlite3.Error as exc:
            raise UserInputError(f"{flag} {redact(url)}: cannot read the study storage ({exc})") from None
    return (True, *_rdb_contents(url, flag))


def probe_study(url: str, study_name: str, flag: str = "--resume") -> None:
    """Refuse, reading only, a resumed search's study storage that cannot be reached or holds no study named
    `study_name`: before anything opens it for writing. Optuna's RDB storage creates its tables in any database
    it opens and SQLite creates a missing file, so a resume against a wrong or unreachable storage would have
    written there before saying no. A gRPC proxy (grpc://) is left to the proxy, which reads its own storage."""
    if url.startswith("grpc://"):
        return
    shown = redact(url)
    exists, _, names = _read_storage(url, flag)
    if not exists:
        path = url.partition(":///")[2].partition("?")[0]
        raise UserInputError(f"{path or shown}: the search's study is missing or empty; refusing to start it afresh")
    if names is None:
        raise UserInputError(
            f"{flag} {shown}: not an Optuna study storage (no {STUDIES_TABLE} table); refusing to write one there"
        )
    if study_name not in names:
        raise UserInputError(f"{flag} {shown}: holds no study named {study_name!r}; refusing to start it afresh")


def probe_new_storage(url: str, flag: str = "--storage") -> None:
    """Refuse, reading only, a new search's study storage that is some other application's database: one that
    has tables and none of Optuna's, where opening it would add Optuna's tables beside that data. A database
    that does not exist yet or is empty (Optuna creates its tables there) and one with Optuna's tables (a study,
    or another driver creating them this moment) are taken. A database that cannot be reached is left to
    `open_storage`, which retries. A gRPC proxy (grpc://) is left to the proxy."""
    if url.startswith("grpc://"):
        return
    try:
        _, tables, _ = _read_storage(url, flag)
    except UserInputError:
        return  # unreachable or unreadable: opening it says so, in one line, after its retries
    if tables and not tables & OPTUNA_TABLES:
        listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise UserInputError(
            f"{flag} {redact(url)}: a database of something else (tables {listed}; no Optuna {STUDIES_TABLE} "
            "table); refusing to write Optuna's tables there: give an empty database or an Optuna one"
        )


def _rdb_contents(url: str, flag: str) -> tuple[set[str], set[str] | None]:
    """The tables and study names (None: no Optuna tables) of a SQLAlchemy database, read with SELECTs."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as conn:
                tables = set(sqlalchemy.inspect(conn).get_table_names())
                if STUDIES_TABLE not in tables:
                    return tables, None
                rows = conn.execute(sqlalchemy.text(f"SELECT study_name FROM {STUDIES_TABLE}"))
                return tables, {row[0] for row in rows}
        finally:
            engine.dispose()
    except Exception as exc:  # SQLAlchemy and drivers raise many types; the message is what the user needs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # Drivers quote the URL, or the password alone, in their errors: neither may reach the terminal.
        raise UserInputError(
            f"{flag} {redact(url)}: cannot open the study storage ({scrub(first, *url_secrets(url))})"
        ) from None
