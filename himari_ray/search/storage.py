"""Where a multi-node search keeps its trials while they run (`--tune-storage`), and their copy into the
search directory at the end."""

from __future__ import annotations

from pathlib import Path

from himari_ray.types import UserInputError

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
