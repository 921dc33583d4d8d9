"""The annotation job: a manifest in, PiTe shards out, on a Ray cluster (docs/design.md, "Execution on a cluster").

One module per job: `config` (settings), `plan` (what an actor needs, the preflight), `actor` (one clip's whole
chain), `ledger` and `faults` (the fault model), `outputs` (what an actor returns), `inputs` and `split` (the
manifest split, demo set), `raysetup` (connecting to Ray), `pool` (the actor pool the driver feeds), `writer` (the
shard-writing thread), `rundir` (a run in a folder or a bucket), `driver` (the run), `stats`, `lock`, `cli`.
"""

from pipelines.annotate.actor import ClipChain, items_from_rows
from pipelines.annotate.cli import main
from pipelines.annotate.config import (NOT_HASHED, QUALITY_COLUMNS, AnnotateJobConfig, SynthSettings, resolve_out,
                                       stage_config_hash)
from pipelines.annotate.driver import run
from pipelines.annotate.inputs import maybe_synthesize, prepare_input
from pipelines.annotate.ledger import AttemptLedger
from pipelines.annotate.plan import ActorPlan, NodeResources, actor_plan, preflight
from pipelines.annotate.pool import ChainPool
from pipelines.annotate.rundir import BucketRunDir, LocalRunDir, open_run_dir
from pipelines.annotate.stats import summary_line
from pipelines.annotate.writer import ShardSink, write_shard

__all__ = ["AnnotateJobConfig", "ActorPlan", "AttemptLedger", "BucketRunDir", "ChainPool", "ClipChain", "LocalRunDir",
           "NOT_HASHED", "NodeResources",
           "QUALITY_COLUMNS", "ShardSink", "SynthSettings", "actor_plan", "items_from_rows", "main",
           "maybe_synthesize", "open_run_dir", "preflight", "prepare_input", "resolve_out", "run", "stage_config_hash",
           "summary_line", "write_shard"]
