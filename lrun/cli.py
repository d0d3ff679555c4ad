"""The `lrun` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the module imports torch: the CLI imports it only when a command needs it
    from lrun.evaluate import EvalSettings


def _bench_env(args: argparse.Namespace) -> int:
    from lrun.env.timing import bench_env, format_env_bench, result_json

    result = bench_env(steps=args.steps, memory_steps=args.memory_steps, physics=args.physics)
    print(format_env_bench(result, args.physics))
    if args.json:
        with open(args.json, "w") as out:
            out.write(result_json(result))
    return 0


#: Exit code of a run stopped early by a signal, after its checkpoint: resume it (a Slurm job script requeues).
EXIT_STOPPED = 3


#: Seconds between a rank's last words and MPI_Abort: under load the abort was seen to kill mpiexec's proxy
#: before it forwarded the line, leaving a bare exit code 2 (tests/test_disk_full.py, 2 ranks, crowded cores).
ABORT_GRACE_S = 0.5


#: Exit code of a command interrupted by Ctrl-C (SIGINT) outside a training loop's own signal handling.
EXIT_INTERRUPTED = 130


def _collective(command: str, body, interrupted_hint: str = "") -> int:
    """Run `body(comm)` on every rank with lrun's failure policy; returns the exit code.

    Problems found before any MPI traffic (config, layout, checkpoints) happen alike on every rank: each rank
    exits with 2 and rank 0 says why. Ctrl-C (mpiexec forwards it to every rank) ends the job with one line from
    rank 0 and `interrupted_hint` (what was kept, how to go on), not a traceback per rank. Anything else on one
    rank mid-run aborts the whole job, instead of leaving the other ranks waiting in a collective.
    """
    from lrun.config import ConfigError
    from lrun.mpi import comm_world
    from lrun.startup import StartupError

    comm = comm_world()
    rank = comm.Get_rank()
    try:
        return body(comm)
    except (ConfigError, StartupError) as exc:
        if rank == 0:
            print(f"lrun {command}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            print(f"lrun {command}: interrupted{interrupted_hint}", file=sys.stderr, flush=True)
        if comm.Get_size() > 1:  # a rank the signal missed may wait in a collective: end them all
            time.sleep(ABORT_GRACE_S)
            comm.Abort(EXIT_INTERRUPTED)
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except BaseException as exc:
        if comm.Get_size() > 1:
            if isinstance(exc, user_errors()):  # a full disk, a vanished file: one line, then end the job
                print(f"lrun {command}: error on rank {rank}: {one_line(exc)}", file=sys.stderr, flush=True)
                time.sleep(ABORT_GRACE_S)  # let mpiexec's proxy forward the line before MPI_Abort kills it
                comm.Abort(2)
                os._exit(2)  # MPI_Abort has been seen to return (a live writer thread): never go on from here
            print(f"lrun {command}: rank {rank} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            time.sleep(ABORT_GRACE_S)
            comm.Abort(1)
            os._exit(1)
        raise


def _train(args: argparse.Namespace) -> int:
    from lrun.config import load_config
    from lrun.training import train

    def body(comm) -> int:
        overrides = list(args.set)
        if args.resume:
            overrides += resume_in_place(args.resume, overrides)
        result = train(load_config(args.config, overrides), resume=args.resume, comm=comm)
        return EXIT_STOPPED if result.get("stopped_early") else 0

    return _collective(args.command, body)  # train, blend or clone: the error names the command typed


def resume_in_place(resume: str, overrides: list[str]) -> list[str]:
    """`--resume RUN` continues RUN in its own directory: the run.run_dir override that says so, unless the
    user named one (then `lrun train` checks that it is RUN's, or an empty one for a checkpoint kept outside
    any run)."""
    from lrun.checkpoint import CheckpointError, resolve_checkpoint
    from lrun.startup import resumed_run_dir

    if any(item.split("=", 1)[0].strip() == "run.run_dir" for item in overrides):
        return []
    try:
        own = resumed_run_dir(resolve_checkpoint(resume))
    except CheckpointError:
        return []  # lrun train says what is wrong with it
    return [f"run.run_dir={own}"] if own is not None else []


def _transfer(args: argparse.Namespace) -> int:
    """`lrun blend` / `lrun clone`: `lrun train` with blend.source or clone.teacher set."""
    extra = [f"blend.source={args.source}"] if args.command == "blend" else [f"clone.teacher={args.teacher}"]
    if args.command == "blend" and args.ramp is not None:
        extra.append(f"blend.ramp_iterations={args.ramp}")
    if args.command == "clone" and args.store:
        extra.append(f"clone.store={args.store}")
    args.set = [*args.set, *extra]
    return _train(args)


def eval_settings(args: argparse.Namespace) -> EvalSettings:
    """The `lrun eval` command line as EvalSettings: a named --setting fixes the task, and a flag may repeat its
    value (or name it another way) but not contradict it (ConfigError)."""
    from lrun.analysis.common import planned_episodes
    from lrun.config import ConfigError
    from lrun.env.physics import ALIASES
    from lrun.env.settings import SETTINGS
    from lrun.evaluate import EvalSettings

    task = SETTINGS[args.setting].to_dict() if args.setting else {}
    for key in ("difficulty", "obstacles", "physics", "weakening"):
        given = getattr(args, key)
        irrelevant = (key == "obstacles" and not task.get("difficulty")) or (
            key == "weakening" and task.get("difficulty", 2) < 2
        )
        same = given == task.get(key) or (key == "physics" and ALIASES.get(given, given) == task.get(key))
        if given is not None and key in task and not same and not irrelevant:
            raise ConfigError(f"--setting {args.setting} runs --{key} {task[key]}, not {given}: drop one of them")
        if given is not None:
            task[key] = given
    defaults = EvalSettings()
    episodes = args.episodes
    if episodes is None:  # a resume continues the evaluation's own count; else the default
        episodes = (planned_episodes(Path(args.out)) if args.resume and args.out else None) or defaults.episodes
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the evaluation in --out and --overwrite replaces it: drop one of them")
    return EvalSettings(
        episodes,
        task.get("difficulty", defaults.difficulty),
        task.get("obstacles", defaults.obstacles),
        args.seed,
        task.get("physics", defaults.physics),
        not args.stochastic,
        args.out or "",
        args.overwrite,
        task.get("weakening", defaults.weakening),
        args.resume,
    )


def _eval(args: argparse.Namespace) -> int:
    from lrun.checkpoint import CheckpointError
    from lrun.config import ConfigError
    from lrun.evaluate import EvalError, EvaluationStopped, evaluate, recorded_stop_signals
    from lrun.startup import StartupError

    settings = eval_settings(args)
    if args.render < 0:
        raise ConfigError(f"--render {args.render}: must be >= 0 (episodes to render)")

    def body(comm) -> int:
        try:
            with recorded_stop_signals() as stop:  # USR1/TERM/INT: finish the running episodes, keep them, exit 3
                result = evaluate(args.checkpoint, settings, comm=comm, stop=stop)
        except (EvalError, CheckpointError) as exc:  # raised by the checks every rank makes alike
            raise StartupError(str(exc)) from exc
        except EvaluationStopped:
            if comm.Get_rank() == 0:
                print(
                    "lrun eval: stopped by a signal after the running episodes; they are kept: the same command "
                    "with --resume (in place of any --overwrite) runs the rest",
                    file=sys.stderr,
                    flush=True,
                )
            return EXIT_STOPPED
        if result and args.render:  # rank 0, once every rank file is closed
            render_evaluated(Path(result["out"]), min(args.render, settings.episodes))
        return 0

    # Each rank flushes an episode to its file as the episode ends, so an interrupted evaluation keeps them all.
    return _collective(
        "eval",
        body,
        "; the episodes finished so far are kept: the same command with --resume (in place of any --overwrite) "
        "runs the rest",
    )


def render_evaluated(out: Path, episodes: int) -> None:
    """Stick-figure videos of the first evaluated episodes: OUT/render/episode-K.mp4 (GIF without an encoder)."""
    from lrun.analysis.render import render_gif, render_mp4, video_encoder_available

    suffix = ".mp4" if video_encoder_available() else ".gif"
    for k in range(episodes):
        target = out / "render" / f"episode-{k}{suffix}"
        path = render_mp4(out, k, target) if suffix == ".mp4" else render_gif(out, k, target)
        print(f"wrote {path}")


def _transfer_study(args: argparse.Namespace) -> int:
    from lrun.checkpoint import CheckpointError
    from lrun.startup import StartupError
    from lrun.transfer_study import run_transfer_study

    def body(comm) -> int:
        try:
            result = run_transfer_study(
                args.source,
                args.config,
                args.out,
                args.methods.split(","),
                args.set,
                args.eval_episodes,
                comm=comm,
                seeds=args.seeds,
            )
        except CheckpointError as exc:
            raise StartupError(str(exc)) from exc
        return EXIT_STOPPED if result.get("stopped_early") else 0

    return _collective("transfer-study", body)


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lrun.analysis.report import build_report, format_report, plot_report
    from lrun.progress import progress_path

    if (Path(args.run_dir) / "eval.json").is_file() and not progress_path(args.run_dir).is_file():
        from lrun.evaluate import eval_report

        text, png = eval_report(args.run_dir)  # an evaluation: its summary and where it fell
        print(text)
        if png:
            print(f"\nwrote {png}")
        return 0
    report = build_report(args.run_dir)
    text = format_report(report)
    print(text)
    out_dir = Path(args.run_dir) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.txt").write_text(text + "\n")
    png = plot_report(report, out_dir / "learning_curves.png")
    written = f"{out_dir / 'report.txt'} and {png}"
    if report["falls"]:
        from lrun.analysis.falls import plot_breakdown

        first, last = report["falls"]["iterations"]
        title = f"iterations {first}-{last}: {report['falls']['falls']} falls in {report['falls']['episodes']} episodes"
        written = f"{out_dir / 'report.txt'}, {png} and {plot_breakdown(report['falls'], out_dir / 'falls.png', title)}"
    print(f"\nwrote {written}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from lrun.analysis.compare import compare

    _, text = compare(args.runs, args.out, args.metric)
    print(text)
    print(f"\nwrote {args.out}/compare.txt, compare.csv and compare.png")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from lrun.analysis.replay import replay_episode

    r = replay_episode(args.run_dir, args.episode, physics=args.physics)
    print(f"episode {r['episode']}: replayed {r['replayed_steps']} of {r['stored_steps']} stored steps")
    print(
        f"max observation deviation {r['max_obs_deviation']:.3g}, max reward deviation "
        f"{r['max_reward_deviation']:.3g}; distance stored {r['stored_distance']:.4f} m, replayed "
        f"{r['replayed_distance']:.4f} m"
    )
    return 0


def _card(args: argparse.Namespace) -> int:
    from lrun.card import model_card, write_card

    for model_dir in args.model_dirs:
        model_card(model_dir)  # every directory checked before any card is written
    for model_dir in args.model_dirs:
        print(f"wrote {write_card(model_dir)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from lrun.checkpoint import export_checkpoint, resolve_checkpoint

    source_size = resolve_checkpoint(args.checkpoint).stat().st_size
    target, notes = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    size = target.stat().st_size
    print(f"wrote {target} ({size / 1e6:.2f} MB, from {source_size / 1e6:.2f} MB): {'; '.join(notes)}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from lrun.analysis.render import render_gif, render_mp4, render_strip, video_encoder_available
    from lrun.config import ConfigError

    suffix = Path(args.output).suffix.lower()
    if suffix not in (".png", ".gif", ".mp4"):
        raise ConfigError(
            f"-o {args.output}: write FILE.gif or FILE.mp4 (an animation) or FILE.png (a strip of frames)"
        )
    if suffix == ".mp4" and not video_encoder_available():
        raise ConfigError(
            f"-o {args.output}: MP4 needs a video encoder: pip install imageio-ffmpeg (or write FILE.gif)"
        )
    if args.frames < 1 or args.stride < 1:
        raise ConfigError(f"--frames {args.frames} / --stride {args.stride}: both must be >= 1")
    output = Path(args.output).absolute()
    if output.is_dir():
        raise ConfigError(f"-o {args.output} is a directory: name the file to write")
    blocking = next(p for p in output.parents if p.exists())
    if not blocking.is_dir():
        raise ConfigError(f"-o {args.output} cannot be written: {blocking} is a file")
    if suffix == ".png":
        path = render_strip(args.run_dir, args.episode, args.output, frames=args.frames)
    elif suffix == ".mp4":
        path = render_mp4(args.run_dir, args.episode, args.output, stride=args.stride)
    else:
        path = render_gif(args.run_dir, args.episode, args.output, stride=args.stride)
    print(f"wrote {path}")
    return 0


def _curriculum(args: argparse.Namespace) -> int:
    from lrun.config import ConfigError
    from lrun.curriculum import curriculum_report, load_curriculum, run_curriculum

    def body(comm) -> int:
        if args.list:
            if comm.Get_rank() == 0:
                stages = load_curriculum(args.curriculum, args.root).stages
                given = {s.name for s in stages if s.checkpoint}  # trained elsewhere: no job, no dependency
                print(
                    "\n".join(
                        f"{s.name} {s.parent if s.parent and s.parent not in given else '-'}"
                        if args.with_parents
                        else s.name
                        for s in stages
                        if s.name not in given
                    )
                )
            return 0
        provided = {}
        for item in args.from_checkpoint:
            stage, sep, checkpoint = item.partition("=")
            if not sep or not stage or not checkpoint:
                raise ConfigError(f"--from {item!r}: expected STAGE=CHECKPOINT (e.g. --from walk=models/walk)")
            provided[stage] = checkpoint
        if args.report:
            if args.stage is not None:
                raise ConfigError("--report writes the whole chain's table: leave out --stage")
            if comm.Get_rank() == 0:
                written = curriculum_report(args.curriculum, args.set, args.root, provided, args.eval_seed)
                print("\n".join(str(p) for p in written))
            return 0
        summaries = run_curriculum(
            args.curriculum,
            args.set,
            root=args.root,
            comm=comm,
            only=args.stage,
            provided=provided,
            eval_episodes=args.eval,
            eval_seed=args.eval_seed,
        )
        return EXIT_STOPPED if summaries and summaries[-1]["status"] == "stopped" else 0

    return _collective("curriculum", body)


def _config_keys(args: argparse.Namespace) -> int:
    from lrun.config import describe_keys

    print(describe_keys())
    return 0


def _mpi_info(args: argparse.Namespace) -> int:
    from lrun.mpi import describe_world

    def body(comm) -> int:
        report = describe_world(comm)
        if report is None:
            return 0
        for line in report.lines():
            print(line)
        if args.ranks:
            for rank, host in enumerate(report.hosts):
                print(f"  rank {rank}: {host}")
        for problem in report.problems():
            print(f"lrun mpi-info: error: {problem}", file=sys.stderr)
        return 1 if report.problems() else 0

    return _collective("mpi-info", body)


def _bench_scaling(args: argparse.Namespace) -> int:
    from lrun.bench_scaling import ScalingError, bench_scaling, format_table, main_progress, write_outputs

    try:
        worlds = [tuple(int(x) for x in item.split(":")) for item in args.worlds.split(",")]
        if any(len(w) != 2 or w[0] <= w[1] or w[1] < 1 for w in worlds):
            raise ValueError
    except ValueError:
        print(
            f"lrun bench scaling: error: --worlds takes RANKS:LEARNERS,... (e.g. 3:1,9:2), got {args.worlds!r}",
            file=sys.stderr,
        )
        return 2
    try:
        result = bench_scaling(
            args.config, args.set, worlds, args.iterations, Path(args.out), args.step_seconds, progress=main_progress
        )
    except ScalingError as exc:
        print(f"lrun bench scaling: error: {exc}", file=sys.stderr)
        return 2
    paths = write_outputs(result, Path(args.out))
    print(format_table(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    _write_json(args.json, result)
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    from lrun.bench import bench_train, format_train_bench

    figures = bench_train(
        iterations=args.iterations,
        ranks=args.ranks,
        env_steps=args.env_steps,
        overrides=args.set,
        config_path=args.config,
    )
    print(format_train_bench(figures))
    _write_json(args.json, figures)
    return 0


def _bench_soak(args: argparse.Namespace) -> int:
    from lrun.bench import bench_soak, format_soak

    figures = bench_soak(env_steps=args.steps, ranks=args.ranks, overrides=args.set)
    print(format_soak(figures))
    _write_json(args.json, figures)
    return 0 if figures["max_growth_mb"] < 20 else 1


def _bench_learn(args: argparse.Namespace) -> int:
    from lrun.bench_learn import BenchError, CommandFailed, format_table, make_plan, output_files, run_bench_learn
    from lrun.config import ConfigError

    try:
        plan = make_plan(
            args.config,
            args.env_steps,
            args.ranks,
            args.seeds,
            args.eval_episodes,
            out=args.out,
            overrides=args.set,
            overwrite=args.overwrite,
        )
        result = run_bench_learn(plan)
    except (BenchError, ConfigError) as exc:
        print(f"lrun bench learn: error: {exc}", file=sys.stderr)
        return 2
    except CommandFailed as exc:
        print(f"lrun bench learn: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(result))
    print(f"wrote {', '.join(str(p) for p in output_files(plan.out))} (runs in {plan.out}/seed-*)")
    _write_json(args.json, result)
    return 0


def _write_json(path: str | None, figures: dict) -> None:
    """A benchmark's figures as JSON, where --json asks for them."""
    if path:
        with open(path, "w") as out:
            json.dump(figures, out, indent=2)


class ProgressOption(argparse.Action):
    """`--progress MODE`: shorthand for `--set run.progress=MODE`."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.set = [*namespace.set, f"run.progress={values}"]


class TrackOption(argparse.Action):
    """`--track [PROJECT]`: shorthand for `--set run.wandb_project=PROJECT`."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.set = [*namespace.set, f"run.wandb_project={values}"]


def add_set_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The repeatable `--set SECTION.KEY=VALUE` config override, and `--progress`."""
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=help_text)
    parser.add_argument(
        "--track",
        nargs="?",
        const="lrun",
        metavar="PROJECT",
        action=TrackOption,
        help="mirror the logs to Weights & Biases project PROJECT (default lrun); offline: WANDB_MODE=offline",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "lines"),
        action=ProgressOption,
        help="bar: one live line on the terminal (through mpiexec too); lines: a line per iteration (log files); "
        "auto (default): bar where a terminal is reachable",
    )


#: Help of the RUN_DIR argument of the analysis commands.
RUN_DIR_HELP = "a run directory (lrun train's run.run_dir) or an lrun eval output directory (--out)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `lrun` and its subcommands."""
    from lrun import __version__
    from lrun.env.layout import WEAKENING
    from lrun.env.physics import GRADERS_PHYSICS, PHYSICS_NAMES
    from lrun.env.settings import SETTINGS
    from lrun.env.stand_in import DEFAULT_STEP_SECONDS

    parser = argparse.ArgumentParser(prog="lrun", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lrun {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a policy with PPO or SAC (run under mpiexec/srun for many ranks)")
    train.add_argument("config", nargs="?", help="TOML config file (omitted: all defaults)")
    add_set_option(train, "override a config key (repeatable), e.g. --set ppo.learning_rate=1e-4")
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint file or run directory")
    train.set_defaults(func=_train)

    for name, what, help_text in (
        ("blend", "source", "train a new network blended with a frozen trained policy (lrun train + blend.source)"),
        ("clone", "teacher", "imitate a trained policy on its stored states, then train it (+ clone.teacher)"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(what, help="checkpoint file or run directory of the trained policy")
        sub.add_argument("config", nargs="?", help="TOML config file of the new run (the network's size etc.)")
        add_set_option(sub, "override a config key (repeatable)")
        sub.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint file or run directory")
        if name == "blend":
            sub.add_argument("--ramp", type=int, help="iterations over which c rises to blend.end")
        else:
            sub.add_argument("--store", help="run directory whose stored states to imitate on (default: teacher's)")
        sub.set_defaults(func=_transfer)

    ts = commands.add_parser(
        "transfer-study", help="blending vs behavioural cloning vs scratch (vs fine-tuning) on one transfer, over seeds"
    )
    ts.add_argument("source", help="checkpoint file or run directory of the trained source policy")
    ts.add_argument("config", nargs="?", help="TOML config of the target runs (bigger network, same budget)")
    ts.add_argument("--out", required=True, help="directory for the methods' runs and the comparison")
    ts.add_argument(
        "--methods",
        default="blend,clone,scratch",
        help="comma-separated from blend, clone, scratch, init (the source's own network fine-tuned); default "
        "blend,clone,scratch",
    )
    ts.add_argument("--seeds", type=int, default=1, help="runs per method, run.seed = 0..N-1 (default 1)")
    ts.add_argument("--eval-episodes", type=int, default=0, help="also lrun eval each final checkpoint (0: skip)")
    add_set_option(ts, "override a config key of every method's run (repeatable)")
    ts.set_defaults(func=_transfer_study)

    ev = commands.add_parser("eval", help="score a checkpoint on fixed seeds (MPI ranks share the episodes)")
    ev.add_argument("checkpoint", help="checkpoint file or run directory")
    ev.add_argument(
        "--episodes", type=int, help="episodes (default 100; with --resume, the count the evaluation in --out runs)"
    )
    ev.add_argument(
        "--setting",
        choices=sorted(SETTINGS),
        help="a named task setting: round2 (the 2017 round 2 as graded: difficulty 2, 10 obstacles, graders-2017 "
        "physics and muscle weakening; what the flags default to) or flat (difficulty 0, graders-2017 physics)",
    )
    ev.add_argument("--difficulty", type=int, help="0, 1 or 2 (default 2: obstacles + weakened muscles)")
    ev.add_argument("--obstacles", type=int, help="max obstacles (default 10, as in round 2)")
    ev.add_argument(
        "--weakening",
        choices=sorted(WEAKENING),
        help="muscles difficulty 2 weakens: graders-2017 (default: glut_max_l and iliopsoas_r, muscle-set indices 11 "
        "and 3, as the 2017 grader did) or psoas (iliopsoas_l and iliopsoas_r)",
    )
    ev.add_argument("--seed", type=int, default=0, help="base seed of the episode seeds (default 0)")
    ev.add_argument(
        "--physics",
        choices=PHYSICS_NAMES,
        default=None,
        help=f"default: the --setting's, else {GRADERS_PHYSICS} (OpenSim's defaults, as the 2017 graders ran)",
    )
    ev.add_argument("--stochastic", action="store_true", help="sample actions instead of the deterministic mean")
    ev.add_argument("--out", help="output directory (default RUN_DIR/eval/d<D>-o<O>-s<S>-n<N>)")
    ev.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    ev.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished (or extend, with more --episodes) evaluation in --out: its finished episodes "
        "are kept, the rest run; the result is the same as in one go",
    )
    ev.add_argument("--render", type=int, default=0, metavar="K", help="render the first K episodes (MP4, else GIF)")
    ev.set_defaults(func=_eval)

    report = commands.add_parser(
        "report",
        help="training progress table + PNG learning curves (live runs too); of an lrun eval directory: its "
        "summary and where its episodes fell (PNG)",
    )
    report.add_argument("run_dir", help=RUN_DIR_HELP)
    report.set_defaults(func=_report)
    cmp = commands.add_parser(
        "compare",
        help="runs grouped by recipe: IQM and 95 %% bootstrap CI over seeds against env steps; or evaluations of "
        "one task and seed, episode by episode against the first (table, PNG)",
    )
    cmp.add_argument(
        "runs",
        nargs="+",
        help="run directories, or directories holding runs (a --seeds job array); or lrun eval output directories",
    )
    cmp.add_argument("--out", default="compare", help="output directory (default ./compare)")
    cmp.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="COLUMN",
        help="also aggregate this progress.csv column (repeatable; e.g. losses/alpha, losses/entropy)",
    )
    cmp.set_defaults(func=_compare)
    replay = commands.add_parser("replay", help="re-simulate a stored episode and print its deviation")
    replay.add_argument("run_dir", help=RUN_DIR_HELP)
    replay.add_argument("--episode", type=int, required=True, help="episode id (episodes/id in the store)")
    replay.add_argument(
        "--physics", choices=PHYSICS_NAMES, help="replay on this physics preset instead of the episode's own"
    )
    replay.set_defaults(func=_replay)
    render = commands.add_parser("render", help="stick-figure animation (.gif) or frame strip (.png) of an episode")
    render.add_argument("run_dir", help=RUN_DIR_HELP)
    render.add_argument("--episode", type=int, required=True, help="episode id (episodes/id in the store)")
    render.add_argument(
        "-o",
        "--output",
        required=True,
        help="FILE.gif or FILE.mp4 (imageio-ffmpeg) for an animation, FILE.png for a strip",
    )
    render.add_argument("--stride", type=int, default=2, help="GIF: draw every n-th step (default 2)")
    render.add_argument("--frames", type=int, default=8, help="PNG strip: number of snapshots (default 8)")
    render.set_defaults(func=_render)

    cur = commands.add_parser("curriculum", help="run curriculum stages in order, each from its parent's checkpoint")
    cur.add_argument("curriculum", help="curriculum TOML (e.g. experiments/curriculum.toml)")
    cur.add_argument("--root", help="directory for the stages' runs (default: the file's root)")
    cur.add_argument("--stage", help="run only this stage (its parent must be complete): one Slurm job per stage")
    cur.add_argument("--list", action="store_true", help="print the stage names in order and exit")
    cur.add_argument("--with-parents", action="store_true", help="with --list: 'stage parent' per line ('-': none)")
    cur.add_argument(
        "--from",
        dest="from_checkpoint",
        action="append",
        default=[],
        metavar="STAGE=CHECKPOINT",
        help="take STAGE as trained by this checkpoint (e.g. walk=models/walk): it is not run, its children start "
        "from it (repeatable)",
    )
    cur.add_argument(
        "--eval",
        type=int,
        default=0,
        metavar="N",
        help="score each finished stage on N episodes at its own task and at round 2 (lrun eval, deterministic, "
        "graders' physics) in ROOT/eval/STAGE/SETTING; done ones are kept, stopped ones resumed (default 0: none)",
    )
    cur.add_argument(
        "--eval-seed",
        type=int,
        default=4242,
        metavar="S",
        help="episode seed of those evaluations (default 4242, the README's round-2 headline's: the same episodes)",
    )
    cur.add_argument(
        "--report",
        action="store_true",
        help="only write ROOT/curriculum.md, .json and .png (the stages' table and curves) from what is on disk",
    )
    add_set_option(cur, "override a config key in every stage (repeatable)")
    cur.set_defaults(func=_curriculum)

    card = commands.add_parser(
        "card", help="write a model directory's card (README.md, Hugging Face format) from its eval.json and PROVENANCE"
    )
    card.add_argument(
        "model_dirs", nargs="+", metavar="MODEL_DIR", help="e.g. models/walk (checkpoint.pt, eval.json, PROVENANCE)"
    )
    card.set_defaults(func=_card)

    export = commands.add_parser(
        "export",
        help="a checkpoint to share or ship: a finished blend as its new network alone, SAC critics kept, optimiser "
        "moments left out (start new runs from it; it cannot be resumed)",
    )
    export.add_argument("checkpoint", help="checkpoint file or run directory")
    export.add_argument("out", help="output file, or a directory (e.g. models/NAME) that gets checkpoint.pt")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    export.set_defaults(func=_export)

    keys = commands.add_parser("config-keys", help="list every config key with its type, default and meaning")
    keys.set_defaults(func=_config_keys)
    info = commands.add_parser(
        "mpi-info", help="which MPI library, thread level and hosts the ranks get (run it as you launch lrun train)"
    )
    info.add_argument("--ranks", action="store_true", help="also list every rank's host")
    info.set_defaults(func=_mpi_info)

    bench = commands.add_parser("bench", help="measure speed and memory")
    bench_kinds = bench.add_subparsers(dest="kind", required=True)
    env = bench_kinds.add_parser("env", help="RunEnv.step vs bare OpenSim integration, physics presets, memory")
    env.add_argument("--steps", type=int, default=2000, help="steps per timing round (default 2000)")
    env.add_argument("--memory-steps", type=int, default=20000, help="steps of the memory soak, 0 to skip")
    env.add_argument("--physics", choices=PHYSICS_NAMES, default="accurate", help="physics of the timing")
    env.add_argument("--json", help="also write the figures to this JSON file")
    env.set_defaults(func=_bench_env)
    tr = bench_kinds.add_parser("train", help="the full training loop under mpiexec vs the single-process env rate")
    tr.add_argument(
        "config", nargs="?", help="TOML config to measure (default: the default config on the accurate physics)"
    )
    tr.add_argument("--iterations", type=int, default=5, help="iterations to run (the first is left out)")
    tr.add_argument(
        "--env-steps", type=int, default=1500, help="steps of the bare env loops measured beside (default 1500)"
    )
    tr.add_argument("--ranks", type=int, default=3, help="MPI ranks (default 3: 1 learner + 2 simulators)")
    add_set_option(tr, "override a config key (repeatable)")
    tr.add_argument("--json", help="also write the figures to this JSON file")
    tr.set_defaults(func=_bench_train)
    soak = bench_kinds.add_parser("soak", help="RSS of every rank over a long training run with many resets")
    soak.add_argument("--steps", type=int, default=100_000, help="env steps (default 100000)")
    soak.add_argument("--ranks", type=int, default=3, help="MPI ranks (default 3)")
    add_set_option(soak, "override a config key (repeatable)")
    soak.add_argument("--json", help="also write the figures to this JSON file")
    soak.set_defaults(func=_bench_soak)
    scaling = bench_kinds.add_parser(
        "scaling", help="the iteration's cost against ranks and learners (lrun/Sleep-v0), a model, cluster predictions"
    )
    scaling.add_argument(
        "config", nargs="?", help="PPO TOML config whose layout and update are measured (default: defaults)"
    )
    worlds = "3:1,5:1,9:1,9:2,17:1"
    scaling.add_argument("--worlds", default=worlds, help=f"RANKS:LEARNERS pairs to measure (default {worlds})")
    scaling.add_argument("--iterations", type=int, default=4, help="iterations per world, the first not counted")
    scaling.add_argument(
        "--step-seconds",
        type=float,
        default=DEFAULT_STEP_SECONDS,
        help=f"lrun/Sleep-v0's step time (default {DEFAULT_STEP_SECONDS}: fast physics)",
    )
    scaling.add_argument("--out", default="bench-results/scaling", help="output directory")
    add_set_option(scaling, "override a config key (repeatable)")
    scaling.add_argument("--json", help="also write the figures to this JSON file")
    scaling.set_defaults(func=_bench_scaling)
    learn = bench_kinds.add_parser(
        "learn", help="train seeds to a budget of simulated env steps, score them with lrun eval: distance vs steps"
    )
    learn.add_argument("config", nargs="?", help="TOML config (default experiments/recipes/walk-sac.toml)")
    learn.add_argument(
        "--env-steps", type=int, default=2_000_000, help="budget of simulated env steps (0.01 s each; default 2e6)"
    )
    learn.add_argument("--ranks", type=int, default=3, help="MPI ranks of training and evaluation (default 3)")
    learn.add_argument("--seeds", type=int, default=1, help="seeds 0..S-1 (default 1)")
    learn.add_argument(
        "--eval-episodes",
        type=int,
        default=100,
        help="episodes of the sampled (--stochastic) evaluation at difficulty 0 on the graders' physics (default 100; "
        "the deterministic one runs 1: its episodes would all be alike)",
    )
    learn.add_argument("--out", help="output directory (default bench-results/learn-<config stem>)")
    learn.add_argument("--overwrite", action="store_true", help="replace the results of an earlier benchmark in --out")
    add_set_option(learn, "override a config key of every seed's run (repeatable)")
    learn.add_argument("--json", help="also write the figures to this JSON file")
    learn.set_defaults(func=_bench_learn)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that describe a problem with the user's input or machine (one line, exit 2), as opposed
    to a bug in lrun (a traceback, kept for the report)."""
    from lrun.analysis.compare import CompareError
    from lrun.bench_learn import BenchError
    from lrun.card import CardError
    from lrun.checkpoint import CheckpointError
    from lrun.config import ConfigError
    from lrun.evaluate import EvalError
    from lrun.mpi import LayoutError
    from lrun.startup import StartupError
    from lrun.store.reader import StoreError

    return (
        ConfigError,
        CheckpointError,
        StoreError,
        EvalError,
        LayoutError,
        StartupError,
        BenchError,
        CompareError,
        CardError,
        OSError,
    )


#: Set LRUN_DEBUG=1 to see the traceback of a user error too.
DEBUG_VARIABLE = "LRUN_DEBUG"


def report_bug(command: str, exc: BaseException) -> Path:
    """Write the traceback of an unexpected exception to a log file; returns its path."""
    import tempfile
    import time
    import traceback

    path = Path(tempfile.gettempdir()) / f"lrun-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text("".join(traceback.format_exception(exc)))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lrun` console script: one error boundary for every command. The project's own
    errors and the usual OS errors end in one line and exit 2; anything else is a bug in lrun: one line that
    says where its traceback is (LRUN_DEBUG=1 prints it)."""
    args = build_parser().parse_args(argv)
    debug = os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"lrun {args.command}: interrupted", file=sys.stderr)
        return 130
    except user_errors() as exc:
        if debug:
            raise
        print(f"lrun {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        log = report_bug(args.command, exc)
        print(
            f"lrun {args.command}: internal error: {type(exc).__name__}: {one_line(exc)} (a bug in lrun: the "
            f"traceback is in {log}; please report it)",
            file=sys.stderr,
        )
        return 1


def one_line(exc: BaseException) -> str:
    """An exception's message on one line; an OSError names its file."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
