"""The `lrun` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _bench_env(args: argparse.Namespace) -> int:
    from lrun.bench import bench_env, format_env_bench, result_json

    result = bench_env(steps=args.steps, memory_steps=args.memory_steps, physics=args.physics)
    print(format_env_bench(result, args.physics))
    if args.json:
        with open(args.json, "w") as out:
            out.write(result_json(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `lrun` and its subcommands."""
    from lrun import __version__
    from lrun.env.physics import PRESETS

    parser = argparse.ArgumentParser(prog="lrun", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lrun {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="measure speed and memory")
    bench_kinds = bench.add_subparsers(dest="kind", required=True)
    env = bench_kinds.add_parser("env", help="RunEnv.step vs bare OpenSim integration, physics presets, memory")
    env.add_argument("--steps", type=int, default=2000, help="steps per timing round (default 2000)")
    env.add_argument("--memory-steps", type=int, default=20000, help="steps of the memory soak, 0 to skip")
    env.add_argument("--physics", choices=sorted(PRESETS), default="reference", help="physics of the timing")
    env.add_argument("--json", help="also write the figures to this JSON file")
    env.set_defaults(func=_bench_env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lrun` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
