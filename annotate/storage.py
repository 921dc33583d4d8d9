"""Object-store URLs (s3://, gs://) next to local paths: the few calls the job makes on either, through fsspec.

fsspec is what video2dataset and the Hugging Face stack use for buckets; s3fs and gcsfs read the endpoint and
credentials from the standard variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY;
GOOGLE_APPLICATION_CREDENTIALS), as every tool of theirs does, so nothing here takes a key or an endpoint.
A bucket is not a folder: no rename, no append. Callers write whole objects, and the lock uses the one atomic
primitive it has, create-if-absent (`fs.pipe_file(..., mode="create")`, S3's If-None-Match).
"""

from __future__ import annotations

import os
import posixpath
import re

from annotate.errors import ConfigError

SCHEMES = {"s3": "s3fs", "gs": "gcsfs"}  # URL scheme -> the fsspec package that reads it
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://")


def url_scheme(value) -> str | None:
    m = _SCHEME.match(str(value))
    return m.group(1) if m else None


def is_url(value) -> bool:
    return url_scheme(value) is not None


def check_url(key: str, url: str) -> None:
    """A one-line ConfigError for a URL the job cannot use: an unknown scheme, or its fsspec package missing."""
    scheme = url_scheme(url)
    if scheme not in SCHEMES:
        raise ConfigError(f"{key}: {scheme}:// is not a storage the job reads or writes; use a path, or an "
                          f"{' or '.join(s + '://' for s in SCHEMES)} URL")
    package = SCHEMES[scheme]
    try:
        __import__(package)
    except ImportError:
        raise ConfigError(f"{key}: {scheme}:// URLs need the {package} package (not installed): pip install "
                          f"{package}") from None


def filesystem(url: str):
    """(fsspec filesystem, path without the scheme) of a URL; instances are cached by fsspec per process."""
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def parent(url: str) -> str:
    scheme, path = url.split("://", 1)
    return f"{scheme}://{posixpath.dirname(path.rstrip('/'))}"


def resolve_against(base: str, path: str) -> str:
    """`path` as the manifest means it: a URL or an absolute path as it is, else joined to `base` (the manifest's
    folder: an absolute path, or a URL) without a system call."""
    if is_url(path) or os.path.isabs(path):
        return path
    if is_url(base):
        scheme, root = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(root, path))}"
    return os.path.normpath(os.path.join(base, path))


def exists(path: str) -> bool:
    if is_url(path):
        fs, p = filesystem(path)
        return fs.exists(p)
    return os.path.exists(path)


def read_bytes(path: str) -> bytes:
    """A whole file or object; FileNotFoundError when it is not there, as `open` raises it."""
    if is_url(path):
        fs, p = filesystem(path)
        return fs.cat_file(p)
    with open(path, "rb") as f:
        return f.read()


def object_version(url: str) -> str:
    """What identifies an object's content without reading it: its ETag (S3) or MD5 (GCS), and its size."""
    fs, p = filesystem(url)
    info = fs.info(p)
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("LastModified") or ""
    return f"{tag}:{info.get('size')}"
