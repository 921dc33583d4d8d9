"""`pite <command> ...`: each command is a module of `pipelines` with a `main(argv)`, also `python -m pipelines.X`."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "synth": ("pipelines.synth", "write synthetic clips with exact ground truth and a manifest"),
    "annotate-clip": ("pipelines.annotate_clip", "annotate one clip without Ray and write its sample"),
    "annotate": ("pipelines.annotate", "annotate a manifest into PiTe shards on Ray"),
    "inspect": ("pipelines.inspect", "summarise a run from its index; --validate reads every sample"),
    "train": ("pipelines.train.run", "train the PiTe model on shards"),
    "infer": ("pipelines.infer", "answer a question about a video"),
    "evaluate": ("pipelines.evaluate.cli", "temporal grounding, captioning, trajectory and QA metrics"),
    "head": ("pipelines.head", "start, inspect or stop a loopback Ray head for this machine (token auth on)"),
    "ablate": ("pipelines.ablate.cli", "train and evaluate a grid of variants x seeds, with error bars"),
    "viz": ("pipelines.viz", "draw a sample's tracks on its frames"),
    "browse": ("pipelines.browse.cli", "write a static site to sort, filter and look through a run in a browser"),
    "convert": ("pipelines.convert", "convert VTimeLLM/LLaVA data into PiTe shards"),
    "weights": ("pipelines.weights", "write random weights for every production backend, in the on-disk form users "
                "download"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {k: v for k, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = _available()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: pite <command> [args]\n\ncommands:")
        for name, (_, help_) in commands.items():
            print(f"  {name:<14} {help_}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\npite: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(commands[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
