"""The PiTe release's command line, kept working: `python inference.py --video_path V --query Q`.

Same arguments as the release's inference.py (yliu-cs/PiTe): by default it loads the release layout under
./checkpoint (vicuna-7b-v1.5, clip-vit-large-patch14, pite-vicuna-7b-v1.5-stage1/2/3; `--model_scale 13b` swaps
the sizes), or each part from --model_base/--stage1/--stage2/--stage3/--clip_path/--pretrain_vision_adapter.
`--checkpoint DIR` uses one of our checkpoints instead. `--fps` is, as in the release, the number of frames sampled.
It runs on `pipelines.infer` (see `pite infer` for --json and --trajectories, which are accepted here too).
Generation defaults are the release's: temperature 0.05, up to 1024 new tokens.
"""

from __future__ import annotations

import argparse
import os
import sys

from annotate.errors import PiteError


def get_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video_path", type=str, required=True)
    ap.add_argument("--query", type=str, required=True)
    ap.add_argument("--fps", type=int, default=100, help="frames sampled from the video (the release's name)")
    ap.add_argument("--model_scale", type=str, default="7b", choices=["7b", "13b"])
    ap.add_argument("--model_base", type=str, default=None)
    ap.add_argument("--stage1", type=str, default=None)
    ap.add_argument("--stage2", type=str, default=None)
    ap.add_argument("--stage3", type=str, default=None)
    ap.add_argument("--clip_path", type=str, default=None)
    ap.add_argument("--pretrain_vision_adapter", type=str, default=None)
    ap.add_argument("--checkpoint", type=str, default=None, help="one of our checkpoint dirs instead of the release")
    ap.add_argument("--device", type=str, default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--dtype", type=str, default=None, help="default: float16 on a GPU (as the release), else float32")
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--max_new_tokens", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--trajectories", type=str, default=None)
    args = ap.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "float16" if args.device.startswith("cuda") else "float32"
    if args.checkpoint is None:
        # The release's defaults: ./checkpoint/<part>, sizes per --model_scale.
        from model.release import find_release

        default = find_release(os.path.join(os.getcwd(), "checkpoint"), args.model_scale)
        for name in ("model_base", "stage1", "stage2", "stage3", "clip_path"):
            if getattr(args, name) is None:
                setattr(args, name, getattr(default, name))
    return args


def main(argv=None) -> int:
    args = get_args(argv)
    from pipelines.infer import load_predictor, run

    try:
        predictor = load_predictor(args)
        predictor.num_frames = args.fps
        pred = run(predictor, args.video_path, args.query, args.json, args.trajectories, args.max_new_tokens,
                   args.temperature, args.seed)
    except PiteError as exc:
        print(f"inference.py: {exc}", file=sys.stderr)
        return 2
    print(pred.answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
