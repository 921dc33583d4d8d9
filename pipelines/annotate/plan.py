"""The job's execution plan (what one actor needs, how many actors) and the preflight against the cluster.

An actor that the cluster cannot place waits for room without end, so a plan the cluster can never hold would
hang. `preflight` compares the plan with what the cluster's nodes have before any work and refuses what
can never be scheduled with a one-line ConfigError that names the config keys (docs/design.md, "Preflight").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from annotate.errors import ConfigError

GIB = 2**30
# What one actor process holds before any stage works: Python, torch, OpenCV, PyAV, spaCy and Ray's worker. The
# embedded path's whole process peaked at 0.7 GiB on a 10-s clip (bench/annotate_job.py, peak_rss).
PROCESS_BASE_GB = 0.75
# The settings that put a learned model in the chain: (config section, its backend key, the model backends).
MODEL_BACKENDS = [("ground", "backend", ("groundingdino", "sam3")), ("segment", "backend", ("sam",)),
                  ("track", "backend", ("cotracker",)), ("features", "backend", ("clip",)),
                  ("confidence", "propagation", ("sam2_video", "edgetam_video", "sam3_tracker"))]


@dataclass
class ActorPlan:
    num_cpus: float  # CPUs one actor declares
    num_gpus: float  # GPUs one actor holds (0: a CPU-only plan)
    memory_gb: float  # memory one actor declares
    gpu_stages: list[str]  # "ground.backend=groundingdino on ground.device=auto", ... (for messages)
    decode_threads: int = 1  # threads an actor decodes in (its declared CPUs)
    workers: int = 0  # actors; set by `preflight` from the cluster


@dataclass
class NodeResources:
    cpus: float
    gpus: float
    memory_gb: float

    def holds(self, plan: ActorPlan) -> int:
        """How many of the plan's actors fit on this node."""
        fits = [self.cpus / plan.num_cpus if plan.num_cpus else math.inf,
                self.gpus / plan.num_gpus if plan.num_gpus else math.inf,
                self.memory_gb / plan.memory_gb if plan.memory_gb else math.inf]
        # A small epsilon: Ray splits GPUs in fractions that do not add up exactly in floating point.
        return int(min(fits) + 1e-9)


def gpu_stage_names(cfg) -> list[str]:
    """The model stages that would run on a GPU: their backend is a model and their device is not `cpu`."""
    found = []
    for stage, key, backends in MODEL_BACKENDS:
        section = getattr(cfg, stage)
        backend = getattr(section, key)
        if backend in backends and str(getattr(section, "device", "cpu")) != "cpu":
            found.append(f"{stage}.{key}={backend} on {stage}.device={section.device}")
    return found


def actor_plan(cfg, stages) -> ActorPlan:
    """What one clip-chain actor declares, from the config and the stages' own declarations."""
    gpu_stages = gpu_stage_names(cfg) if cfg.gpus_per_actor > 0 else []
    # The stages share one process: its base once, plus what each stage holds (weights, buffers).
    memory = cfg.actor_memory_gb or PROCESS_BASE_GB + sum(s.resources().memory_gb for s in stages)
    if gpu_stages:
        return ActorPlan(num_cpus=float(cfg.decode_threads), num_gpus=float(cfg.gpus_per_actor), memory_gb=memory,
                         gpu_stages=gpu_stages, decode_threads=int(cfg.decode_threads))
    # A CPU-only plan is one process per CPU doing decode..features in one thread, as a plain loop would.
    return ActorPlan(num_cpus=1.0, num_gpus=0.0, memory_gb=memory, gpu_stages=[])


def cluster_nodes() -> list[NodeResources]:
    """The alive nodes of the connected Ray cluster, with their total resources."""
    import ray

    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        nodes.append(NodeResources(cpus=res.get("CPU", 0.0), gpus=res.get("GPU", 0.0),
                                   memory_gb=res.get("memory", 0.0) / GIB))
    return nodes


def preflight(cfg, plan: ActorPlan, nodes: list[NodeResources]) -> ActorPlan:
    """Check that the cluster can ever hold the plan; set `plan.workers`. One-line ConfigError otherwise."""
    total_gpus = sum(n.gpus for n in nodes)
    if plan.num_gpus and total_gpus == 0:
        raise ConfigError(f"the plan needs GPUs ({'; '.join(plan.gpu_stages)}; gpus_per_actor={cfg.gpus_per_actor:g})"
                          f" but the Ray cluster has none: connect to a GPU cluster (ray_address= or ray job submit), "
                          f"or run the models on CPUs with gpus_per_actor=0")
    capacity = sum(n.holds(plan) for n in nodes)
    if capacity == 0:
        raise ConfigError(f"no node of the Ray cluster can hold one annotation actor: it needs {_needs(cfg, plan)}; "
                          f"the largest node has {_largest(nodes)}")
    key, asked = ("gpu_workers", cfg.gpu_workers) if plan.num_gpus else ("cpu_workers", cfg.cpu_workers)
    if asked > capacity:
        raise ConfigError(f"{key}={asked} actors cannot all be scheduled: the Ray cluster holds {capacity} "
                          f"(each needs {_needs(cfg, plan)}); set {key}={capacity} or 0 (= as many as fit)")
    plan.workers = asked or capacity
    return plan


def _needs(cfg, plan: ActorPlan) -> str:
    cpus = f"decode_threads={cfg.decode_threads}" if plan.num_gpus else "one per CPU-only actor"
    parts = [f"{plan.num_cpus:g} CPUs ({cpus})"]
    if plan.num_gpus:
        parts.append(f"{plan.num_gpus:g} GPUs (gpus_per_actor)")
    source = "actor_memory_gb" if cfg.actor_memory_gb else "what its stages declare; actor_memory_gb= overrides"
    parts.append(f"{plan.memory_gb:.1f} GiB memory ({source})")
    return ", ".join(parts)


def _largest(nodes: list[NodeResources]) -> str:
    if not nodes:
        return "nothing (no alive node)"
    n = max(nodes, key=lambda n: (n.gpus, n.cpus, n.memory_gb))
    return f"{n.cpus:g} CPUs, {n.gpus:g} GPUs, {n.memory_gb:.1f} GiB memory"
