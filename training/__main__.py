"""python -m training --config configs/<name>.yaml [--out DIR] [--max-steps N] [--seed S] [--resume]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.config import load_config
from training.trainer import train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train a DDPM or flow-matching model from a YAML config and write an EMA checkpoint "
        "(manifest.json + safetensors) that export and serving read.",
    )
    p.add_argument("--config", required=True, help="training config, e.g. configs/moons-fm.yaml")
    p.add_argument("--out", help="checkpoint directory (default: models/<config name>)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (quick runs)")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out to the config's steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.max_steps is not None and args.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
        out = Path(args.out) if args.out else Path("models") / cfg.name
        ckpt = train(
            cfg,
            out,
            max_steps=args.max_steps,
            seed=args.seed,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"checkpoint written to {ckpt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
