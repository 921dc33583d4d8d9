"""`pite evaluate` and the demo benchmark.

    tasks.py    `pite evaluate grounding|captioning|trajectory|qa` on a checkpoint (`python -m pipelines.evaluate`)
    metrics.py  the metrics: grounding IoU/recall, dense captioning (CIDEr-D, SODA_c, METEOR), trajectories
    bench.py    `make eval`: the demo checkpoint beside its baselines on held-out synthetic clips
    heldout.py  the held-out trajectory check run after training, and the held-out clips it needs
"""
