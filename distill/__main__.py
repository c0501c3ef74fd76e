"""python -m distill --config configs/<name>-reflow.yaml [--out DIR] [--max-steps N]"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from training.checkpoint import CheckpointError
from training.config import load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m distill",
        description="Distill a few-step student from a trained flow-matching teacher by rectified-flow reflow: "
        "draw (noise, teacher sample) couplings with the teacher's ODE, train the student on their straight "
        "lines, write an EMA checkpoint that export and serving read like any other.",
    )
    p.add_argument(
        "--config", required=True, help="a config with a 'reflow' section, e.g. configs/moons-fm-reflow.yaml"
    )
    p.add_argument("--out", help="checkpoint directory (default: models/<config name>)")
    p.add_argument("--teacher", help="the teacher's checkpoint directory (default: the config's reflow.teacher)")
    p.add_argument("--pairs", type=int, help="couplings to draw (default: the config's reflow.pairs; quick runs)")
    p.add_argument("--max-steps", type=int, help="stop after this many training steps (quick runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if cfg.reflow is None:
            raise ValueError(f"{args.config} has no 'reflow' section: train it with python -m training")
        overrides = {k: v for k, v in (("teacher", args.teacher), ("pairs", args.pairs)) if v is not None}
        if overrides:  # checked as the config's own values are (ReflowConfig)
            cfg = dataclasses.replace(cfg, reflow=dataclasses.replace(cfg.reflow, **overrides))
        if args.max_steps is not None and args.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
        from distill.reflow import distill  # torch and the samplers load after the arguments are checked

        out = Path(args.out) if args.out else Path("models") / cfg.name
        ckpt = distill(cfg, out, max_steps=args.max_steps, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"checkpoint written to {ckpt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
