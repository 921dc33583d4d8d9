"""`pite ablate`: a grid of training variants x seeds on the demo world, evaluated on the same held-out clips,
summarised with error bars and paired differences against the full model.

    config.py   the grid: the base train config, variants as overlays (stages dropped, stage keys set), seeds
    grid.py     one run per (variant, seed): train, evaluate, one line of results.jsonl; done runs are skipped
    stats.py    mean, standard deviation, paired difference to the full model with its 95 % interval
    plot.py     ablation.png: bars with error bars
    cli.py      the command line (`python -m pipelines.ablate`, `make ablation`)
"""
