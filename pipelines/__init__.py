"""Runnable jobs (annotate, train, infer, evaluate, inspect, viz, synth) and the `pite` CLI. All I/O lives here."""
