"""The stage protocol, after datatrove / NeMo Curator: load once in `setup`, then `process` batches of items.

A stage declares the resources one instance needs; the Ray job (`pipelines.annotate`) turns that into actor
options, and a notebook simply calls `setup()` then `process([...])`. A failure on one item rejects that item
(stage name + one-line reason) and the batch goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from annotate.config import AnnotateConfig
from annotate.errors import PiteError
from annotate.item import ClipItem


@dataclass
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float = 1.0


def import_problem(module: str, needed_for: str, fix: str) -> list[str]:
    """[] when `module` imports, else one line: what needs it, why it failed and how to install it."""
    import importlib

    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install fails in many ways; each is reported as one line
        reason = "not installed" if isinstance(exc, ModuleNotFoundError) else one_line(exc)[:160]
        return [f"{needed_for} needs the `{module.split('.')[0]}` package ({reason}): {fix}"]
    return []


def one_line(exc: BaseException) -> str:
    """A reject reason fit for a parquet cell: our own errors as they are, others prefixed by their type."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, PiteError) else f"{type(exc).__name__}: {text}"


class Stage:
    name = "stage"
    # The items of a batch may run in threads of their own: the stage's work releases the GIL (decoding).
    threaded = False

    def __init__(self, cfg: AnnotateConfig):
        self.cfg = cfg
        self._ready = False

    def resources(self) -> Resources:
        return Resources()

    def setup(self) -> None:
        """Load models / weights. Called once per worker before the first batch (through `ready`)."""

    def ready(self) -> "Stage":
        """The stage set up, once: what a runner calls before its first batch (`process` does it if needed)."""
        if not self._ready:
            self.setup()
            self._ready = True
        return self

    def problems(self) -> list[str]:
        """What would stop `setup` here, found without loading a model: a package that does not import, a weights
        path that is not there. One line each, naming the config key; the job lists them all before Ray starts."""
        return []

    def version(self) -> str:
        """Backend name and version for the sample's provenance."""
        return self.name

    def process_item(self, item: ClipItem) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement process_item or process")

    def process_batch(self, items: list[ClipItem]) -> None:
        """Default: one item at a time. Batched backends (SAM, CLIP, Grounding DINO) override this."""
        for item in items:
            self._guarded(item, self.process_item)

    def process(self, items: list[ClipItem]) -> list[ClipItem]:
        self.ready()
        live = [it for it in items if it.ok]
        t0 = time.perf_counter()
        self.process_batch(live)
        share = (time.perf_counter() - t0) / max(1, len(live))
        for it in live:
            it.timings[self.name] = it.timings.get(self.name, 0.0) + share
            it.versions[self.name] = self.version()
        return items

    def _guarded(self, item: ClipItem, fn) -> None:
        try:
            fn(item)
        except Exception as exc:  # one bad row must never end the batch: it becomes a reject
            item.reject(getattr(exc, "stage", self.name), one_line(exc))
