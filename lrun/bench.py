"""`lrun bench train` and `lrun bench soak`: the whole training loop under `mpiexec` (launched as the tests
launch it, `lrun.launcher`), against the env's own single-process rate (`lrun.env.timing`), and every rank's
memory over a long run. Reports are formatted here; the figures come from this machine, now.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from lrun.env.timing import concurrent_env_rate, single_process_env_rate
from lrun.launcher import mpiexec_lrun, run_lrun
from lrun.progress import load_progress


def bench_train(
    iterations: int = 5,
    ranks: int = 3,
    env_steps: int = 1500,
    overrides: list[str] | None = None,
    run_dir: str | None = None,
    config_path: str | None = None,
) -> dict[str, float]:
    """`mpiexec -n ranks lrun train` at a config (default: the default config on the accurate physics), against
    the single-process env rate at the same physics times the simulators.

    The run goes to a temporary directory unless `run_dir` (or `--set run.run_dir=...`) names one. Returns the
    figures; the first iteration (start-up) is left out of the rates.
    """
    from lrun.config import load_config

    overrides = list(overrides or [])
    if config_path is None:  # the accurate physics (RK-Merson 5e-5), the README's figures', unless overridden
        overrides = ["env.physics=accurate", *overrides]
    config = load_config(config_path, overrides)
    if any(item.split("=", 1)[0].strip() == "run.run_dir" for item in overrides):
        run_dir = config.run.run_dir  # asked for: the run is kept there
    physics = config.env.physics
    print(f"single-process env rate ({physics} physics, {env_steps} steps) ...", file=sys.stderr, flush=True)
    single = single_process_env_rate(physics, env_steps)
    simulators = ranks - config.layout.learners
    print(f"{simulators} env loops at once ...", file=sys.stderr, flush=True)
    concurrent = concurrent_env_rate(physics, env_steps, simulators)
    run_dir = run_dir or tempfile.mkdtemp(prefix="lrun-bench-train-")
    args = ["train", *([config_path] if config_path else []), "--progress", "lines"]
    overrides = [item for item in overrides if item.split("=", 1)[0].strip() != "run.run_dir"]
    for item in [*overrides, f"run.iterations={iterations}", f"run.run_dir={run_dir}"]:
        args += ["--set", item]
    print(f"running: {' '.join(mpiexec_lrun(ranks, *args))}", file=sys.stderr, flush=True)
    run_lrun(ranks, *args, check=True, stdout=sys.stderr)
    progress = load_progress(run_dir)
    env_steps = progress["env_steps"]
    steady_steps = float(env_steps[-1] - env_steps[1])  # from the end of the first iteration (start-up) on
    wall = float(sum(progress["time/iteration_s"][2:]))
    ranks_stats = [json.loads(p.read_text()) for p in sorted((Path(run_dir) / "ranks").glob("rank-*.json"))]

    def mean(key: str) -> float:
        return float(np.mean(progress[key][1:]))

    def wait_cpu(role: str) -> float:
        waits = [s for s in ranks_stats if s["role"] == role]
        return sum(s["wait_cpu_s"] for s in waits) / max(sum(s["wait_wall_s"] for s in waits), 1e-9)

    figures = {
        "ranks": ranks,
        "simulators": simulators,
        "single_process_steps_per_s": single,
        "train_steps_per_s": steady_steps / wall,
        "ideal_steps_per_s": simulators * single,
        "concurrent_steps_per_s": concurrent,
        "iteration_s": mean("time/iteration_s"),
        "simulate_s": mean("time/simulate_s"),
        "communicate_s": mean("time/communicate_s"),
        "learn_s": mean("time/learn_s"),
        "simulator_wait_fraction": mean("time/simulator_wait_fraction"),
        "learner_wait_cpu_fraction": wait_cpu("learner"),
        "simulator_wait_cpu_fraction": wait_cpu("simulator"),
        "learner_wait_wall_s": sum(s["wait_wall_s"] for s in ranks_stats if s["role"] == "learner"),
        "algorithm": config.run.algorithm,
        "physics": physics,
        "config": config_path or "default",
        "run_dir": str(run_dir),
    }
    figures["store_s"] = mean("time/store_s")
    figures["store_fraction"] = figures["store_s"] / figures["simulate_s"]
    stored_bytes = sum(p.stat().st_size for p in (Path(run_dir) / "trajectories").glob("rank-*.h5"))
    figures["store_bytes_per_million_steps"] = stored_bytes / float(env_steps[-1]) * 1e6
    figures["efficiency"] = figures["train_steps_per_s"] / figures["ideal_steps_per_s"]
    figures["efficiency_vs_concurrent"] = figures["train_steps_per_s"] / concurrent
    return figures


def bench_soak(
    env_steps: int = 100_000, ranks: int = 3, overrides: list[str] | None = None, run_dir: str | None = None
) -> dict:
    """Memory soak: `mpiexec -n ranks lrun train` for `env_steps` env steps on Run-v0 at difficulty 2 with 10
    obstacles (every reset draws a new layout and rebuilds the OpenSim model), storing every step in HDF5.

    Returns each rank's RSS after its second iteration (warm) and at the end, and the growth between them.
    """

    from lrun.config import load_config
    from lrun.store.reader import RunStore

    settings = [
        "env.difficulty=2",
        "env.max_obstacles=10",
        "env.physics=fast",
        "layout.envs_per_rank=4",
        "layout.steps_per_env=128",
        "ppo.epochs=2",
        "policy.hidden_sizes=[64, 64]",
        "run.checkpoint_every=10",
        *(overrides or []),
    ]
    config = load_config(None, settings)
    per_iteration = (ranks - config.layout.learners) * config.layout.envs_per_rank * config.layout.steps_per_env
    iterations = max(3, -(-env_steps // per_iteration))
    run_dir = run_dir or tempfile.mkdtemp(prefix="lrun-bench-soak-")
    args = ["train", "--progress", "lines"]
    for item in [*settings, f"run.iterations={iterations}", f"run.run_dir={run_dir}"]:
        args += ["--set", item]
    print(f"running: {' '.join(mpiexec_lrun(ranks, *args))}", file=sys.stderr, flush=True)
    run_lrun(ranks, *args, check=True, stdout=sys.stderr)
    per_rank = []
    for path in sorted((Path(run_dir) / "ranks").glob("rank-*.json")):
        stats = json.loads(path.read_text())
        samples = stats["rss_mb"]
        warm = next(mb for it, mb in samples if it >= 2)
        per_rank.append(
            {
                "rank": stats["world_rank"],
                "role": stats["role"],
                "rss_warm_mb": warm,
                "rss_end_mb": samples[-1][1],
                "rss_max_mb": max(mb for _, mb in samples),
                "growth_mb": samples[-1][1] - warm,
            }
        )
    with RunStore(run_dir) as store:
        episodes = len(store.episodes(["id"])["id"])
    return {
        "env_steps": iterations * per_iteration,
        "iterations": iterations,
        "episodes": episodes,
        "ranks": per_rank,
        "max_growth_mb": max(r["growth_mb"] for r in per_rank),
        "run_dir": run_dir,
    }


def format_soak(f: dict) -> str:
    """The soak's figures as lines."""
    lines = [
        f"memory soak: {f['env_steps']} env steps in {f['iterations']} iterations, {f['episodes']} episodes "
        "(each reset rebuilds the OpenSim model with a new obstacle layout)"
    ]
    for r in f["ranks"]:
        lines.append(
            f"  rank {r['rank']} ({r['role']}): RSS {r['rss_warm_mb']:.1f} MB after iteration 2, "
            f"{r['rss_end_mb']:.1f} MB at the end (max {r['rss_max_mb']:.1f}): growth {r['growth_mb']:+.1f} MB"
        )
    verdict = "flat" if f["max_growth_mb"] < 20 else "GROWING"
    lines.append(f"  largest growth {f['max_growth_mb']:+.1f} MB (goal < 20 MB): {verdict}")
    return "\n".join(lines)


def format_train_bench(f: dict[str, float]) -> str:
    """Human-readable report of `bench_train`."""
    return "\n".join(
        [
            f"training loop, mpiexec -n {f['ranks']} ({f['simulators']} simulators + learner), "
            f"{f.get('config', 'default')} config ({f.get('algorithm', 'ppo').upper()}, {f.get('physics')} physics; "
            f"run in {f.get('run_dir')}):",
            f"  env steps/s in training      {f['train_steps_per_s']:8.1f}",
            f"  {f['simulators']} x single-process env rate  {f['ideal_steps_per_s']:8.1f}   "
            f"(one env alone: {f['single_process_steps_per_s']:.1f})",
            f"  ratio                        {f['efficiency']:8.2f}   (goal >= 0.85)",
            f"  {f['simulators']} bare env loops at once     {f['concurrent_steps_per_s']:8.1f}   (what the cores give "
            f"together: {f['concurrent_steps_per_s'] / f['ideal_steps_per_s']:.2f} of {f['simulators']} x one alone)",
            f"  training / loops at once     {f['efficiency_vs_concurrent']:8.2f}",
            f"  time split per iteration     {f['iteration_s']:.2f} s: simulate {f['simulate_s']:.2f} s, communicate "
            f"{f['communicate_s']:.2f} s, learn {f['learn_s']:.2f} s",
            f"  simulators idle              {100 * f['simulator_wait_fraction']:8.1f} % of their cycle (goal < 10 %)",
            f"  HDF5 trajectory writing      {f['store_s']:.3f} s per iteration = {100 * f['store_fraction']:.2f} % of "
            f"rollout time (goal < 2 %); {f['store_bytes_per_million_steps'] / 1e6:.0f} MB per million steps",
            f"  CPU while waiting            learner {100 * f['learner_wait_cpu_fraction']:.1f} %, simulators "
            f"{100 * f['simulator_wait_cpu_fraction']:.1f} % of their waiting wall time (goal < 10 %)",
        ]
    )
