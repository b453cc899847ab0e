"""Local paths and s3:// URIs behind one pyarrow filesystem. S3 settings come from the
standard AWS environment variables (AWS_ENDPOINT_URL, AWS_REGION, access keys), which a
config's `storage:` section may set."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath, PurePosixPath
from urllib.parse import urlparse

import pyarrow.fs as pafs

# The S3 settings a Ray worker may be told (never the keys).
PUBLIC_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED",
)


def configure(
    endpoint_url: str = "", region: str = "", access_key_id: str = "", secret_access_key: str = ""
) -> None:
    """Apply a config's `storage:` section to this process's AWS_* variables, which pyarrow,
    Ray Train's checkpoint uploads and the workers of a Ray cluster started after this read."""
    settings = {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret_access_key,
    }
    os.environ.update({k: v for k, v in settings.items() if v})
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never ask the cloud for keys


def public_settings() -> dict[str, str]:
    return {k: os.environ[k] for k in PUBLIC_SETTINGS if os.environ.get(k)}


def is_remote(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    # An explicit region: without one the client asks the cloud metadata address for it.
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs = {"endpoint_override": parsed.netloc, "scheme": parsed.scheme or "https"}
    return pafs.S3FileSystem(region=region, **kwargs)


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3://bucket/key URI."""
    if is_remote(uri):
        return s3_filesystem(), str(uri)[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def uri_of(path: str, like: str | Path) -> str:
    """Ray reports paths inside the storage filesystem, without a scheme: give one back
    the scheme of `like` (the storage path they came from)."""
    if is_remote(like) and "://" not in path:
        return f"s3://{path}"
    return path


def join(uri: str | Path, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


def exists(uri: str | Path) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str | Path) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def version(uri: str | Path) -> str:
    """Changes when the file at uri is rewritten: its modification time and size."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    return f"{info.mtime_ns}-{info.size}"


def list_dirs(uri: str | Path) -> list[str]:
    """Names of the sub-directories of uri, sorted; [] when uri is not a directory."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def list_files(uri: str | Path, suffix: str = "") -> list[str]:
    """Files under the directory uri (recursively) ending in suffix, as URIs like uri."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    root, base = str(uri).rstrip("/"), path.rstrip("/")
    return sorted(
        root + i.path[len(base) :]
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(suffix)
    )


def read_bytes(uri: str | Path) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def download(uri: str, files: list[str], local_dir: Path) -> Path:
    """Copy the named files of a remote directory into local_dir; each file appears whole
    or not at all."""
    fs, path = resolve(uri)
    local_dir.mkdir(parents=True, exist_ok=True)
    local = pafs.LocalFileSystem()
    for name in files:
        partial = local_dir / f".{name}.{os.getpid()}.partial"  # replicas may share local_dir
        pafs.copy_files(f"{path}/{name}", str(partial), fs, local)
        partial.replace(local_dir / name)
    return local_dir


def write_bytes(uri: str | Path, data: bytes) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def delete_dir(uri: str | Path) -> None:
    """Remove a directory and everything under it; nothing to do if it is not there."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Make dst a copy of the directory src (local or s3://, in any combination). Locally
    the copy is made beside dst and renamed over it, so dst is never half-written."""
    sfs, spath = resolve(src)
    dfs, dpath = resolve(dst)
    if isinstance(dfs, pafs.LocalFileSystem):
        staging = Path(f"{dpath}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        pafs.copy_files(spath, str(staging), sfs, dfs)
        shutil.rmtree(dpath, ignore_errors=True)
        staging.replace(dpath)
        return
    delete_dir(dst)
    dfs.create_dir(dpath, recursive=True)
    pafs.copy_files(spath, dpath, sfs, dfs)


def check_output_dir(
    out: str | Path,
    arg: str = "OUT",
    inputs: Mapping[str, str | Path | None] | None = None,
    reusable: Callable[[list[str]], bool] | None = None,
) -> None:
    """Refuse, before any work, an output directory a command must not write into: a file (or
    a file on its path), a non-empty directory unless `reusable(its entries)` (an earlier
    output the command replaces), and one that is, lies inside or holds an input (`inputs`:
    what it is called → its path). `arg` names the argument in each message."""
    for what, source in (inputs or {}).items():
        if source is not None:
            _check_apart(out, arg, what, source)
    if is_remote(out):  # best effort: S3 has no directories, only keys under a prefix
        if is_file(out):
            raise NotADirectoryError(f"{arg} {out}: is a file; give a new or empty directory")
        root = str(out).rstrip("/")
        names = sorted({f[len(root) :].lstrip("/").split("/")[0] for f in list_files(out)})
        if names and not (reusable and reusable(names)):
            raise FileExistsError(f"{arg} {out}: not empty; give a new or empty directory")
        return
    path = Path(out)
    if path.is_file():
        raise NotADirectoryError(f"{arg} {out}: is a file; give a new or empty directory")
    for parent in path.absolute().parents:  # mkdir would stop at a file on the way
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{arg} {out}: {parent} is a file, not a directory")
            break
    if path.is_dir():
        names = sorted(os.listdir(path))
        if names and not (reusable and reusable(names)):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise FileExistsError(
                f"{arg} {out}: not empty (holds {shown}); give a new or empty directory"
            )


def _check_apart(out: str | Path, arg: str, what: str, source: str | Path) -> None:
    """ValueError when out is source, lies inside it or holds it: writing there would mix
    the output into the input, or replace the input."""
    if is_remote(out) != is_remote(source):
        return
    a: PurePath
    b: PurePath
    if is_remote(out):
        a, b = PurePosixPath(str(out)[5:].rstrip("/")), PurePosixPath(str(source)[5:].rstrip("/"))
    else:
        a, b = Path(out).resolve(), Path(source).resolve()
    if a == b:
        raise ValueError(f"{arg} {out}: is {what} itself; give a directory outside it")
    if a.is_relative_to(b):
        raise ValueError(f"{arg} {out}: inside {what} {source}; give a directory outside it")
    if b.is_relative_to(a):
        raise ValueError(f"{arg} {out}: holds {what} {source}; give a directory outside it")
