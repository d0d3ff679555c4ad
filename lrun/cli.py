"""The `lrun` command line."""

from __future__ import annotations

import argparse
import json
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


def _train(args: argparse.Namespace) -> int:
    from lrun.checkpoint import CheckpointError
    from lrun.config import ConfigError, load_config
    from lrun.mpi import LayoutError, comm_world

    comm = comm_world()
    rank = comm.Get_rank()
    try:
        config = load_config(args.config, args.set)
        from lrun.train import train

        train(config, resume=args.resume, comm=comm)
    except (ConfigError, LayoutError, CheckpointError, ValueError, FileNotFoundError) as exc:
        # Raised before any collective and alike on every rank: each rank exits; one speaks.
        if rank == 0:
            print(f"lrun train: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except BaseException as exc:
        if comm.Get_size() > 1:
            # A failure on one rank mid-run: bring the whole job down instead of leaving others in a collective.
            print(f"lrun train: rank {rank} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            import traceback

            traceback.print_exc()
            comm.Abort(1)
        raise
    return 0


def _config_keys(args: argparse.Namespace) -> int:
    from lrun.config import describe_keys

    print(describe_keys())
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    from lrun.bench import bench_train, format_train_bench

    figures = bench_train(iterations=args.iterations, ranks=args.ranks, overrides=args.set)
    print(format_train_bench(figures))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `lrun` and its subcommands."""
    from lrun import __version__
    from lrun.env.physics import PRESETS

    parser = argparse.ArgumentParser(prog="lrun", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lrun {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a policy with PPO (run under mpiexec/srun for many ranks)")
    train.add_argument("config", nargs="?", help="TOML config file (omitted: all defaults)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config key (repeatable), e.g. --set ppo.learning_rate=1e-4",
    )
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint file or run directory")
    train.set_defaults(func=_train)

    keys = commands.add_parser("config-keys", help="list every config key with its type, default and meaning")
    keys.set_defaults(func=_config_keys)

    bench = commands.add_parser("bench", help="measure speed and memory")
    bench_kinds = bench.add_subparsers(dest="kind", required=True)
    env = bench_kinds.add_parser("env", help="RunEnv.step vs bare OpenSim integration, physics presets, memory")
    env.add_argument("--steps", type=int, default=2000, help="steps per timing round (default 2000)")
    env.add_argument("--memory-steps", type=int, default=20000, help="steps of the memory soak, 0 to skip")
    env.add_argument("--physics", choices=sorted(PRESETS), default="reference", help="physics of the timing")
    env.add_argument("--json", help="also write the figures to this JSON file")
    env.set_defaults(func=_bench_env)
    tr = bench_kinds.add_parser("train", help="the full training loop under mpiexec vs the single-process env rate")
    tr.add_argument("--iterations", type=int, default=5, help="iterations to run (the first is left out)")
    tr.add_argument("--ranks", type=int, default=3, help="MPI ranks (default 3: 1 learner + 2 simulators)")
    tr.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    tr.add_argument("--json", help="also write the figures to this JSON file")
    tr.set_defaults(func=_bench_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lrun` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
