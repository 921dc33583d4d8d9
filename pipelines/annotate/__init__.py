"""The annotation job: a manifest in, PiTe shards out, on Ray Data (docs/design.md, "Execution on a cluster").

One module per job: `config` (settings), `plan` (what an actor needs, the preflight), `actor` (one clip's whole
chain), `ledger` and `faults` (the fault model), `outputs` (what an actor returns), `inputs` (manifest split,
demo set), `raysetup` (Ray and Ray Data), `driver` (the run), `stats`, `lock`, `cli`.
"""

from pipelines.annotate.actor import ClipChain, items_from_rows
from pipelines.annotate.cli import main
from pipelines.annotate.config import (NOT_HASHED, QUALITY_COLUMNS, AnnotateJobConfig, SynthSettings, resolve_out,
                                       stage_config_hash)
from pipelines.annotate.driver import run, write_shard
from pipelines.annotate.inputs import maybe_synthesize, prepare_input, read_input_files
from pipelines.annotate.ledger import AttemptLedger
from pipelines.annotate.plan import ActorPlan, NodeResources, actor_plan, preflight
from pipelines.annotate.raysetup import data_context
from pipelines.annotate.stats import summary_line

__all__ = ["AnnotateJobConfig", "ActorPlan", "AttemptLedger", "ClipChain", "NOT_HASHED", "NodeResources",
           "QUALITY_COLUMNS", "SynthSettings", "actor_plan", "data_context", "items_from_rows", "main",
           "maybe_synthesize", "preflight", "prepare_input", "read_input_files", "resolve_out", "run",
           "stage_config_hash", "summary_line", "write_shard"]
