"""Ray for the job: connecting to the cluster of `ray job submit` or `ray_address`, or starting a local Ray."""

from __future__ import annotations

import os


def init_ray(cfg) -> bool:
    """Connect to / start Ray unless this process already did; True when this call did (and so shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    # The actors allow restarts, so Ray's C++ core logs an ERROR line per actor about it (ray-project/ray#53727);
    # worker deaths still reach the console as "(raylet)" messages, and every row's fate is in rejects/.
    # RAY_BACKEND_LOG_LEVEL=info brings the C++ logs back.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    kwargs: dict = dict(logging_level="ERROR", log_to_driver=False)
    if cfg.ray_address:
        kwargs["address"] = cfg.ray_address
    elif not os.environ.get("RAY_ADDRESS"):  # not under `ray job submit`: a local Ray of our own, never another's
        kwargs.update(address="local", num_cpus=cfg.num_cpus or None, include_dashboard=False)
        if cfg.num_gpus >= 0:
            kwargs["num_gpus"] = cfg.num_gpus
    ray.init(**kwargs)
    return True
