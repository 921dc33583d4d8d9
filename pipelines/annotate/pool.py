"""The job's executor: a fixed pool of clip-chain actors that the driver feeds itself, a few calls ahead of each.

Why not Ray Data's `map_batches`: it keeps statistics for every block for the dataset's life, and with one row per
block (what spreads a shard over the actors) that is about 1 KB a row on the head node, 11 GB at 10M rows; and its
0-CPU readers may queue the whole input ahead of the actors. Here the driver reads each shard's input file when
the actors need it, keeps at most `depth` calls in flight per actor (explicit backpressure: the input is never
more than workers x depth x batch_size rows ahead), and holds nothing per row once the row is written. An actor
that dies (a crash, a lost node) is restarted by Ray, and its batches go to whichever actor is free, where the
attempt ledger (OUT/.attempts) tells the retry which rows were in flight; an actor that cannot start ends the job
with one line.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from annotate.errors import PiteError

# An actor pool that returns nothing within this many seconds of its start is an error, not a hang. The preflight
# refuses what can never be scheduled; this catches what it cannot see (a node lost while starting, weights that
# never finish loading).
ACTOR_START_TIMEOUT_S = 900
DEPTH = 2  # calls in flight per actor: one running, one waiting, so an actor never idles between calls
PROBE_AGAIN_S = 0.5  # between probes of an actor that is still restarting
# With nothing back for this long, the driver asks Ray whether the actors of the calls in flight still live: a call
# on an actor whose node was lost while Ray cannot place it again may never fail by itself.
STALL_CHECK_S = 30.0


def read_batches(files: Iterable[Path], batch_size: int,
                 on_file: Optional[Callable] = None) -> Iterator[dict]:
    """Per-shard input files -> batches of `batch_size` rows (columns as lists), one shard's file read at a time,
    when the pool asks for the next batch. `on_file(table)` sees each file's rows (the run counts their bytes)."""
    import pyarrow.parquet as pq

    for path in files:
        table = pq.read_table(path)
        if on_file is not None:
            on_file(table)
        for start in range(0, table.num_rows, batch_size):
            yield table.slice(start, batch_size).to_pydict()


def rows_of(columns: dict) -> Iterator[dict]:
    """An actor's output columns -> one dict per row."""
    names = list(columns)
    for i in range(len(columns["row"])):
        yield {k: columns[k][i] for k in names}


class ChainPool:
    """`workers` actors of `actor_cls` (ClipChain, or a bench's stand-in), each declaring the plan's resources.

    An actor that dies is restarted by Ray (`max_restarts`), but its calls are not retried by Ray: the driver puts
    their batches back in front of the input and hands them to whichever actor is free, so a lost node whose actors
    cannot be placed again (no room left) costs no row and no wait. A restarted actor gets work again once it
    answers a `ready` probe; one that never comes back is dropped."""

    def __init__(self, actor_cls, args: tuple, workers: int, num_cpus: float, num_gpus: float,
                 memory_bytes: Optional[int], depth: int = DEPTH):
        import ray

        options = dict(num_cpus=num_cpus, num_gpus=num_gpus or 0, max_restarts=-1, max_task_retries=0)
        if memory_bytes:
            options["memory"] = memory_bytes
        remote = ray.remote(actor_cls).options(**options)
        self.actors = [remote.remote(*args) for _ in range(workers)]
        self.depth = depth
        self.waited = 0.0  # seconds the driver spent waiting for a result (the actors were the bottleneck)

    def map(self, batches: Iterator[dict], on_start_failure: Callable[[BaseException], Optional[str]]) \
            -> Iterator[dict]:
        """Each batch's output columns, in the order they finish; at most depth calls in flight per actor."""
        state = _Flight(self.actors, self.depth, iter(batches))
        started, got_any = time.perf_counter(), False
        while state.dispatch():
            t0 = time.perf_counter()
            timeout = None if got_any else max(1.0, ACTOR_START_TIMEOUT_S - (t0 - started))
            ref = state.next_done(timeout)
            self.waited += time.perf_counter() - t0
            if ref is None:  # woken to send a probe again, or nothing has come back for too long
                if not got_any and time.perf_counter() - started >= ACTOR_START_TIMEOUT_S:
                    raise PiteError(f"no annotation actor returned a result within {ACTOR_START_TIMEOUT_S} s of "
                                    f"the start (models still loading, or actors that cannot be placed)")
                state.drop_calls_on_dead_actors()
                state.check_stranded()
                continue
            result = state.take(ref, on_start_failure)
            if result is not None:
                got_any = True
                yield result

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


class LocalPool:
    """`executor=local`: one chain in the driver's own process, called batch by batch, with the pool's interface.
    No Ray (its start-up, its packages): for small runs and machines without Ray. A worker death is the job's death
    here, so there are no retries; a rerun resumes from the shards written."""

    def __init__(self, actor_cls, args: tuple):
        self.actor_cls, self.args = actor_cls, args
        self.waited = 0.0  # seconds in the chain (the driver's wait on a pool)

    def map(self, batches: Iterator[dict], on_start_failure: Callable[[BaseException], Optional[str]]) \
            -> Iterator[dict]:
        from annotate.stage import one_line

        try:
            chain = self.actor_cls(*self.args)
        except Exception as exc:  # noqa: BLE001 - said in one line, as an actor that cannot start
            raise PiteError(f"the annotation chain could not start: {type(exc).__name__}: {one_line(exc)}") from None
        for batch in batches:
            t0 = time.perf_counter()
            result = chain(batch)
            self.waited += time.perf_counter() - t0
            yield result

    def close(self) -> None:
        """Nothing runs outside this process."""


class _Flight:
    """The calls in flight, the actors free to take one, the batches to hand out again and the actors being probed
    after a death. One driver thread uses it."""

    def __init__(self, actors: list, depth: int, source: Iterator[dict]):
        self.free = deque(a for a in actors for _ in range(depth))
        self.depth, self.source = depth, source
        self.calls: dict = {}  # result ref -> (actor, batch)
        self.probes: dict = {}  # ready ref -> actor
        self.probing: set = set()
        self.later: list = []  # (when, actor): probes to send again, the actor was still restarting
        self.again: deque = deque()  # batches of calls whose actor died
        self.exhausted = False
        self.stranded_since: Optional[float] = None  # work waits and no call is in flight: every actor is down

    def dispatch(self) -> bool:
        """Hand out batches while actors are free; False when nothing is left in flight or to hand out."""
        now = time.monotonic()
        for when, actor in [x for x in self.later if x[0] <= now]:
            self.later.remove((when, actor))
            self.probes[actor.ready.remote()] = actor
        while self.free and (self.again or not self.exhausted):
            batch = self.again.popleft() if self.again else next(self.source, None)
            if batch is None:
                self.exhausted = True
                break
            actor = self.free.popleft()
            self.calls[actor.run.remote(batch)] = (actor, batch)
        if self.again and not self.calls and not self.probes and not self.later:
            raise PiteError("every annotation actor died and none came back: see the Ray logs (ray job logs, "
                            "/tmp/ray/session_latest/logs)")
        return bool(self.calls) or bool(self.again and (self.probes or self.later))  # waiting for an actor

    def next_done(self, timeout: Optional[float]):
        import ray

        if self.later or (self.again and not self.calls):  # wake up to re-probe, and to notice a stranded run
            timeout = PROBE_AGAIN_S if timeout is None else min(timeout, PROBE_AGAIN_S)
        elif self.calls:  # wake up now and then to look for calls on actors that are gone
            timeout = STALL_CHECK_S if timeout is None else min(timeout, STALL_CHECK_S)
        refs = list(self.calls) + list(self.probes)
        if not refs:  # only re-probes wait: sleep until the first is due (ray.wait([]) would return at once)
            time.sleep(max(0.0, min(w for w, _ in self.later) - time.monotonic()) if self.later else PROBE_AGAIN_S)
            return None
        done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        return done[0] if done else None

    def drop_calls_on_dead_actors(self) -> None:
        """Calls whose actor Ray reports restarting or dead go back to be handed out again,
        as a failed call would (the ledger still tells the retry which rows were in flight)."""
        from ray._private.state import actors  # Ray's own GCS actor table: no dashboard needed

        for ref, (actor, batch) in list(self.calls.items()):
            try:
                state = actors(actor._actor_id.hex()).get("State")
            except Exception:  # noqa: BLE001 - a lookup that fails says nothing about the actor: leave the call
                continue
            if state in ("RESTARTING", "DEAD"):  # not PENDING_CREATION: an actor still starting keeps its calls
                del self.calls[ref]
                self._died(actor, batch)

    def check_stranded(self) -> None:
        """Work waits, no call is in flight and no actor has come back for ACTOR_START_TIMEOUT_S (its node gone and
        no room elsewhere): an error that says so, not a wait without end."""
        if not (self.again and not self.calls):
            self.stranded_since = None
            return
        now = time.monotonic()
        self.stranded_since = self.stranded_since or now
        if now - self.stranded_since >= ACTOR_START_TIMEOUT_S:
            raise PiteError(f"every annotation actor died and none came back within {ACTOR_START_TIMEOUT_S} s "
                            f"(their node lost and no room for them elsewhere?); the same command resumes")

    def take(self, ref, on_start_failure) -> Optional[dict]:
        """The result of a finished call (None for a probe or a call whose actor died)."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        if ref in self.probes:
            actor = self.probes.pop(ref)
            try:
                ray.get(ref)
                self.probing.discard(actor)
                self.free.extend([actor] * self.depth)
            except ActorUnavailableError:  # still restarting: ask again in a moment
                self.later.append((time.monotonic() + PROBE_AGAIN_S, actor))
            except RayActorError:  # gone for good: no work for it again
                self.probing.discard(actor)
            return None
        actor, batch = self.calls.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - an actor that cannot start ends the job with one line
            reason = on_start_failure(exc)
            if reason is not None:
                raise PiteError(f"an annotation actor could not start: {reason}") from None
            if not isinstance(exc, RayActorError):
                raise
            self._died(actor, batch)
            return None
        if actor not in self.probing:
            self.free.append(actor)
        return result

    def _died(self, actor, batch: dict) -> None:
        self.again.append(batch)
        if actor in self.probing:
            return
        self.probing.add(actor)
        self.free = deque(a for a in self.free if a is not actor)
        self.probes[actor.ready.remote()] = actor
