"""`pite train`: the trainer, one module per job.

    config.py   the typed config (TrainConfig) and its checks
    data.py     annotation shards -> examples -> micro-batches (webdataset), epochs and resume positions
    dist.py     the process group: one process, torchrun, a Ray Train worker
    setup.py    what a stage starts from: base LLM or previous stage merged, parameter groups, schedule
    recipe.py   one stage: setup (model, optimiser, schedule, stream), the train loop, save
    epochs.py   real epochs: each sample once per pass over ranks x workers
    fsdp.py     FSDP2 sharding, gradient sync, gathering what checkpoints need
    state.py    resumable checkpoints (checkpoints/step-N/)
    run.py      every stage in order, OUT/final, launchers, the command line (`python -m pipelines.train`)
    resume.py   what OUT holds: continue it, keep a finished run, refuse another config's (fresh=true starts over)
"""
