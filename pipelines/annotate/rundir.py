"""Where a run lives: a local folder (`LocalRunDir`), or a bucket URL (`BucketRunDir`) that the job reaches through a
local staging folder. The driver asks the same questions of either: which shards are done, where the attempt
ledger is, and what to publish when a file is finished.

A bucket has no rename, so nothing is written there in pieces: every file is made whole in staging (by the same code
as a local run) and uploaded once complete, each upload one whole object. A shard is done when its three objects
are listed; the index goes up last, so the catalogue never names a tar that is not there. The run's state that a
rerun needs (run.json, the per-shard input files, config.yaml) is in the bucket too, so a rerun on another machine
resumes from one listing of the bucket; only a split cut off before it finished continues from staging alone
(elsewhere it starts over). The ledger is written by the actors straight to the bucket (small whole objects), as
they may run on any node, and the lock is an object created only if absent.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from annotate.errors import ConfigError
from annotate.stage import one_line
from annotate.storage import check_url, filesystem, join
from pipelines.shards import FINAL_NAME, SUBDIRS, list_done_shards, list_partial_shards, remove_partial

LEDGER = ".attempts"
RUN_FILE = "run.json"


class LocalRunDir:
    """OUT is a folder on storage every node mounts: the job writes there directly."""

    remote = False

    def __init__(self, path: Path):
        self.path = Path(path)
        self.where = str(self.path)  # how messages name the run
        self.ledger = str(self.path / LEDGER)

    def prepare(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"out: {self.path} is a file, not a folder; choose another out=")
        self.path.mkdir(parents=True, exist_ok=True)

    def lock(self):
        from pipelines.annotate.lock import run_lock

        return run_lock(self.path)

    def done_shards(self) -> list[int]:
        return list_done_shards(self.path)

    def partial_shards(self) -> list[int]:
        return list_partial_shards(self.path)

    def remove_partial(self) -> None:
        remove_partial(self.path)

    def clear_ledger(self) -> None:
        shutil.rmtree(self.ledger, ignore_errors=True)

    def unlink(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def publish(self, name: str) -> None:
        """A file of the run is complete in `path`: nothing more to do for a folder."""

    def publish_inputs(self) -> None:
        """The split is complete in `path`: nothing more to do for a folder."""

    def fetch_inputs(self, shards) -> None:
        """The input files are in `path` already."""

    publish_shard = None  # the shard writer has nothing to do after a shard is in place

    def kept_counts(self, done: list[int]) -> dict:
        from pipelines.annotate.stats import counts_from_done

        return counts_from_done(self.path, done)


def default_staging(url: str) -> Path:
    """The system temp folder's pite-staging/<hash of the URL>: the same URL finds its own staging again."""
    return Path(tempfile.gettempdir()) / "pite-staging" / hashlib.sha256(url.encode()).hexdigest()[:16]


class BucketRunDir:
    """OUT is an s3:// or gs:// URL. `path` is the local staging folder the job writes in; `where` is the URL."""

    remote = True

    def __init__(self, url: str, staging: str = ""):
        check_url("out", url)
        self.where = url.rstrip("/")
        self.fs, self.root = filesystem(self.where)
        self.path = Path(staging) if staging else default_staging(self.where)
        self.ledger = join(self.where, LEDGER)
        self.names: set[str] = set()  # the objects under the URL at the start, relative to it
        self.run_file_at_start = b""

    def _key(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def prepare(self) -> None:
        """List the bucket once; staging as the run needs it: the bucket's run.json and config.yaml when it has
        them (the bucket is the truth), no shard files of an earlier attempt (those not uploaded are redone)."""
        try:
            found = self.fs.find(self.root)
        except Exception as exc:  # noqa: BLE001 - endpoint, credentials, a missing bucket: one line before any work
            raise ConfigError(f"out: cannot list {self.where}: {one_line(exc)} (endpoint and credentials come from "
                              f"AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)") from None
        prefix = self.root.rstrip("/") + "/"
        self.names = {k[len(prefix):] for k in found if k.startswith(prefix)}
        self.path.mkdir(parents=True, exist_ok=True)
        for sub, _ in SUBDIRS.values():
            shutil.rmtree(self.path / sub, ignore_errors=True)
        for name in (RUN_FILE, "config.yaml"):
            if name in self.names:
                self.fs.get_file(self._key(name), str(self.path / name))
        if RUN_FILE in self.names:
            self.run_file_at_start = (self.path / RUN_FILE).read_bytes()

    def lock(self):
        from pipelines.annotate.lock import bucket_lock

        return bucket_lock(self.fs, self._key(".run.lock"), self.where)

    def _shards(self) -> dict[int, int]:
        """shard -> how many of its three objects the listing holds."""
        found: dict[int, int] = {}
        for sub, ext in SUBDIRS.values():
            for name in self.names:
                head, _, base = name.rpartition("/")
                m = FINAL_NAME.fullmatch(base)
                if head == sub and m and base.endswith(ext):
                    found[int(m.group(1))] = found.get(int(m.group(1)), 0) + 1
        return found

    def done_shards(self) -> list[int]:
        return sorted(s for s, n in self._shards().items() if n == len(SUBDIRS))

    def partial_shards(self) -> list[int]:
        return sorted(s for s, n in self._shards().items() if n < len(SUBDIRS))

    def remove_partial(self) -> None:
        """Objects of shards whose upload was cut off (the tar without its index, say) go: the shard is redone."""
        from pipelines.shards import shard_name

        for s in self.partial_shards():
            for sub, ext in SUBDIRS.values():
                name = f"{sub}/{shard_name(s)}{ext}"
                if name in self.names:
                    self.fs.rm_file(self._key(name))
                    self.names.discard(name)

    def clear_ledger(self) -> None:
        if self.fs.exists(self._key(LEDGER)):
            self.fs.rm(self._key(LEDGER), recursive=True)

    def unlink(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)
        if name in self.names:
            self.fs.rm_file(self._key(name))
            self.names.discard(name)

    def publish(self, name: str) -> None:
        self.fs.put_file(str(self.path / name), self._key(name))
        self.names.add(name)

    def publish_inputs(self) -> None:
        """After the split: its input files, then run.json (last: it says they are all there). Nothing to do when
        the bucket's run.json is the one staging has (a resumed run)."""
        run_file = (self.path / RUN_FILE).read_bytes()
        if run_file == self.run_file_at_start:
            return
        if RUN_FILE in self.names:  # another run's split, replaced: its run.json goes first
            self.unlink_remote(RUN_FILE)
        local = sorted(str(p) for p in (self.path / "input").glob("pite-*.parquet"))
        # One call for all: fsspec overlaps the uploads (one at a time, 150k files would take most of an hour).
        self.fs.put(local, [self._key(f"input/{Path(p).name}") for p in local])
        self.names.update(f"input/{Path(p).name}" for p in local)
        self.publish(RUN_FILE)

    def unlink_remote(self, name: str) -> None:
        self.fs.rm_file(self._key(name))
        self.names.discard(name)

    def fetch_inputs(self, shards) -> None:
        """The input files of the shards to do, from the bucket where staging lacks them (a rerun elsewhere)."""
        from pipelines.shards import input_file

        wanted = [input_file(self.path, s) for s in shards]
        wanted = [p for p in wanted if not p.is_file() and f"input/{p.name}" in self.names]
        if wanted:
            wanted[0].parent.mkdir(parents=True, exist_ok=True)
            self.fs.get([self._key(f"input/{p.name}") for p in wanted], [str(p) for p in wanted])  # overlapped

    def publish_shard(self, shard: int) -> None:
        """A shard complete in staging goes up, its index last, and leaves staging (it would fill the disk)."""
        from pipelines.shards import shard_paths

        paths = shard_paths(self.path, shard)
        for kind in ("tar", "rejects", "index"):
            sub, _ = SUBDIRS[kind]
            self.fs.put_file(str(paths[kind]), self._key(f"{sub}/{paths[kind].name}"))
        for p in paths.values():
            p.unlink()

    def kept_counts(self, done: list[int]) -> dict:
        """Counts of the shards an earlier run finished, read from their index and rejects in the bucket."""
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        from pipelines.annotate.stats import counts_from_done

        return counts_from_done(self.root.rstrip("/"), done, PyFileSystem(FSSpecHandler(self.fs)), threads=32)


def open_run_dir(out, staging: str = ""):
    from annotate.storage import is_url

    return BucketRunDir(str(out), staging) if is_url(out) else LocalRunDir(Path(out))
