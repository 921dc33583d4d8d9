"""`pite evaluate` and the demo benchmark.

    tasks.py    the tasks on a checkpoint: grounding, captioning, trajectory, qa
    data.py     what they read: temporal annotations (ActivityNet, query lists, Charades-STA), features, QA files
    cli.py      the command line (`pite evaluate`, `python -m pipelines.evaluate`), `score` included
    dense.py    dense captioning exactly as VTimeLLM (CIDEr, METEOR, SODA_c, Precision, Recall)
    score.py    re-score a log of answers without a model
    metrics.py  grounding IoU and recall, trajectory errors, QA exact match
    bench.py    `make eval`: the demo checkpoint beside its baselines on held-out synthetic clips
    heldout.py  the held-out trajectory check run after training, and the held-out clips it needs
"""
