"""`lrun bench scaling`: the training iteration measured at the world sizes this machine can host, the scaling
model (`lrun.scaling`) calibrated on those measurements and checked against them, and its predictions for a
cluster (64, 256 and 1024 ranks, InfiniBand-class links by default).

More ranks than cores are possible because the simulators step `lrun/Sleep-v0` (RunEnv's shapes, step time
spent asleep): every message has its real size and a simulator's step its real duration, but a sleeping
simulator leaves its core to the others. The learner's update, the policy's forward passes and MPI itself
still run on this machine's cores, so the largest worlds here are crowded; the table says how far the model
is from each measurement.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lrun.config import TrainConfig, load_config
from lrun.env.stand_in import SLEEP_ENV_ID
from lrun.launcher import launch_environment, mpiexec_lrun
from lrun.progress import load_progress
from lrun.scaling import (
    Machine,
    Workload,
    as_dict,
    fit_update_cost,
    learners_for,
    predict,
    sac_layouts,
    sac_updates,
    simulators_per_learner,
    tree_stages,
)

PREDICTED_RANKS = (64, 256, 1024)
#: An InfiniBand HDR-100-class link: ~2 microseconds, ~12 GB/s (the README's stated assumption).
CLUSTER_LATENCY_S = 2e-6
CLUSTER_BANDWIDTH_BPS = 12e9


class ScalingError(RuntimeError):
    """A problem with the benchmark's input or a run it started."""


def workload(config: TrainConfig) -> Workload:
    """The iteration's message sizes and update shape for `config` (RunEnv's 41 observations, 18 actions)."""
    from lrun.env.features import feature_size
    from lrun.learn.policy import ActorCritic, count_trainable
    from lrun.rollout import Rollout
    from lrun.training.engine import message_size

    obs, act = 41, 18
    p = config.policy
    policy = ActorCritic(
        feature_size(p.features, obs), act, p.hidden_sizes, p.activation, p.distribution, p.init_log_std
    )
    steps, envs = config.layout.steps_per_env, config.layout.envs_per_rank
    sac: dict[str, Any] = {}
    if config.run.algorithm == "sac":
        from lrun.learn.sac import TwinQ

        critics = TwinQ(feature_size(p.features, obs), act, config.sac.hidden_sizes)
        sac = {
            "algorithm": "sac",
            "frame_skip": config.env.frame_skip,
            "updates_per_step": config.sac.updates_per_step,
            "critic_parameters": sum(q.numel() for q in critics.parameters()),
            "overlap": config.sac.overlap,
        }
    return Workload(
        envs_per_rank=envs,
        steps_per_env=steps,
        epochs=config.ppo.epochs,
        minibatches=config.ppo.minibatches,
        parameters=count_trainable(policy),
        rollout_bytes=4 * Rollout.size(steps, envs, obs, act, n_episodes=0),
        message_bytes=8 * message_size(policy, obs),
        moments_bytes=8 * (2 * obs + 1),
        **sac,
    )


def measure_world(
    config_path: str | None, overrides: list[str], ranks: int, learners: int, iterations: int, out: Path
) -> dict[str, float]:
    """Train `iterations` iterations at `ranks` ranks on lrun/Sleep-v0; the mean of every time/ column after
    the first (warm-up) iteration, and the simulated steps per second."""
    run_dir = out / f"r{ranks}-l{learners}"
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [
        *overrides,
        f"env.id={SLEEP_ENV_ID}",
        f"layout.learners={learners}",
        f"run.iterations={iterations}",
        f"run.run_dir={run_dir}",
        "run.store_trajectories=false",  # the store's compression would crowd the shared cores
        "run.tensorboard=false",
        f"run.checkpoint_every={iterations}",
    ]
    command = mpiexec_lrun(ranks, "train", *([config_path] if config_path else []))
    command += [item for key in sets for item in ("--set", key)] + ["--progress", "lines"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=launch_environment())
    if result.returncode != 0:
        raise ScalingError(f"{' '.join(command)} exited with {result.returncode}: {result.stderr.strip()[-600:]}")
    progress = load_progress(run_dir)
    if len(progress) < 2:
        raise ScalingError(f"{run_dir}: fewer than two iterations; give --iterations >= 2")
    # the first (warm-up) iteration not counted
    figures = {key: float(np.mean(values[1:])) for key, values in progress.columns.items() if key.startswith("time/")}
    # a simulator reports its wait with its next rollout, so row k holds cycle k-1's: the warm-up cycle (in which
    # an overlapped learner has no update to wait for) shows in row 1; where there are rows enough, skip it too
    waits = progress.columns["time/simulator_wait_fraction"]
    figures["time/simulator_wait_fraction"] = float(np.mean(waits[2:] if len(waits) > 2 else waits[1:]))
    # env_steps is cumulative: the counted iterations' steps are the difference from the warm-up's
    env_steps = progress["env_steps"]
    per_iteration = int(env_steps[-1] - env_steps[0]) / (len(progress) - 1)
    figures["steps_per_iteration"] = per_iteration
    figures["steps_per_s"] = per_iteration / figures["time/iteration_s"]
    return figures


#: Minibatch sizes whose SAC gradient step `update_costs` times (the recipe's own is added).
UPDATE_BATCH_SIZES = (64, 128, 256, 512, 1024, 2048)


def update_costs(config: TrainConfig, batch_sizes: tuple[int, ...], seconds_each: float = 0.5) -> dict[int, float]:
    """Seconds of one SAC gradient step (critics, actor, temperature) at each minibatch size, with the recipe's
    networks, on one thread of this machine (a learner's core), from a buffer of random transitions normalised
    as training does. With `blend.source` set, the actor is that policy frozen and blended (mid-ramp, c = 0.5)
    into the config's network, so the step includes the frozen network and the distillation term."""
    import torch

    from lrun.api import load_policy
    from lrun.checkpoint import resolve_checkpoint
    from lrun.env.features import IDENTITY, extension_of, feature_size
    from lrun.learn.blend import build_from_spec, new_blend
    from lrun.learn.policy import ActorCritic
    from lrun.learn.sac import SACSettings, SACUpdater
    from lrun.startup import extend_source

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a learner rank runs (lrun.training.loop)
    p, sac = config.policy, config.sac
    obs, act = feature_size(p.features, 41), 18
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=obs).astype(np.float32), rng.uniform(0.5, 2, obs).astype(np.float32)

    def normalise(x: np.ndarray) -> np.ndarray:  # the shape of TrainingState.normalised's work
        return np.clip((x - mean) / std, -10, 10).astype(np.float32)

    source = None
    if config.blend.source:
        path = resolve_checkpoint(config.blend.source)
        source = load_policy(path)
        added = extension_of(p.features, source[2]["config"]["policy"].get("features", IDENTITY))
        if added:  # a parent of a map this one extends, carried as a run would carry it (lrun.startup)
            payload = extend_source(source[2], added, path, "blend.source")
            frozen = build_from_spec(payload["meta"]["policy_spec"])
            frozen.load_state_dict(payload["policy"])
            source = (frozen, None, payload)
    costs = {}
    try:
        for size in sorted(set(batch_sizes) | {sac.batch_size}):
            torch.manual_seed(0)
            actor = ActorCritic(obs, act, p.hidden_sizes, p.activation, "squashed", p.init_log_std)
            if source is not None:
                frozen, _, payload = source
                actor = new_blend(frozen, payload["normaliser"].numpy(), actor)
                actor.set_coefficient(0.5, config.blend.distill_coef)
            settings = SACSettings(batch_size=size, hidden_sizes=sac.hidden_sizes)
            updater = SACUpdater(actor, settings, buffer_size=max(4 * size, 10_000))
            n = updater.buffer.capacity
            updater.buffer.add(
                rng.normal(size=(n, obs)).astype(np.float32),
                rng.uniform(-1, 1, (n, act)).astype(np.float32),
                rng.normal(size=n).astype(np.float32),
                rng.normal(size=(n, obs)).astype(np.float32),
                np.zeros(n, np.float32),
            )
            updater.update(2, normalise)  # warm-up: allocations, the optimisers' state
            steps, elapsed = 0, 0.0
            start = time.perf_counter()
            while elapsed < seconds_each or steps < 3:
                updater.update(1, normalise)
                steps += 1
                elapsed = time.perf_counter() - start
            costs[size] = elapsed / steps
    finally:
        torch.set_num_threads(threads)
    return costs


#: Shared-memory MPI latency on one machine: too small to measure through lrun's polite waits; a stated guess.
LOCAL_LATENCY_S = 1e-6


def calibrate(points: list[dict[str, Any]], work: Workload) -> Machine:
    """The model's machine figures from the measurements: step time (simulation over steps), learner seconds
    per sample per epoch (one learner), bandwidth (the rollouts' blocking receives) and the polite-wait cost
    per collective stage (the broadcasts)."""
    step_s = float(np.median([p["time/simulate_s"] / work.samples_per_simulator for p in points]))
    one = [p for p in points if p["learners"] == 1]
    c = update_s = 0.0
    if work.algorithm == "sac":  # seconds per gradient step: the learner's time over the steps it took
        update_s = float(np.median([p["time/learn_s"] / sac_updates(p["ranks"] - 1, 1, work) for p in one]))
    else:
        samples = [work.epochs * (p["ranks"] - 1) * work.samples_per_simulator for p in one]
        c = float(np.median([p["time/learn_s"] / n for p, n in zip(one, samples, strict=True)]))
    per_message = [p["time/mpi_recv_transfer_s"] / ((p["ranks"] - p["learners"]) / p["learners"]) for p in points]
    bandwidth = work.rollout_bytes / max(float(np.median(per_message)) - LOCAL_LATENCY_S, 1e-9)
    # the model's broadcast term, T_bcast = stages (a + b_message / B + p), solved for p
    poll = float(
        np.median(
            [
                p["time/mpi_bcast_s"] / tree_stages(p["ranks"]) - LOCAL_LATENCY_S - work.message_bytes / bandwidth
                for p in points
            ]
        )
    )
    return Machine(step_s, c, LOCAL_LATENCY_S, bandwidth, max(poll, 0.0), update_s)


def runenv_step_seconds(physics: str = "fast", steps: int = 200) -> float:
    """Wall seconds of one RunEnv step on this machine (no policy): the cluster prediction's physics cost."""
    from lrun.env.run_env import RunEnv

    env = RunEnv(physics=physics)
    env.reset(seed=0)
    action = np.full(18, 0.05, np.float32)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset(seed=0)
    return (time.perf_counter() - start) / steps


def bench_scaling(
    config_path: str | None,
    overrides: list[str],
    worlds: list[tuple[int, int]],
    iterations: int,
    out: Path,
    sleep_step_s: float,
    latency_s: float = CLUSTER_LATENCY_S,
    bandwidth_Bps: float = CLUSTER_BANDWIDTH_BPS,
    progress: Any = None,
) -> dict[str, Any]:
    """Measure every (ranks, learners) world, calibrate and check the model, predict the cluster."""
    if load_config(config_path, overrides).run.algorithm == "sac":
        # every counted iteration updates (no warm-up), and the replay file's writes stay off the shared cores
        overrides = [*overrides, "sac.learning_starts=0", "sac.save_buffer=false"]
    config = load_config(config_path, overrides)
    if not any(learners == 1 for _, learners in worlds):
        raise ScalingError("--worlds needs a world with one learner (it calibrates the learner's speed)")
    work = workload(config)
    out.mkdir(parents=True, exist_ok=True)
    # Sleep-v0 has RunEnv's shapes but no body: what needs RunEnv's meaning (shaping, the pelvis-relative features,
    # the left/right mirror) is switched off; the message sizes stay within a few per cent
    run_env_only = [
        "reward.weights={}",
        "policy.features=task",
        "ppo.mirror=false",
        "ppo.symmetry_loss=0",
        "sac.mirror=false",
    ]
    sleep_set = [*overrides, *run_env_only, f"env.kwargs={{step_seconds = {sleep_step_s}}}"]
    points = []
    for ranks, learners in worlds:
        if progress:
            progress(f"measuring {ranks} ranks, {learners} learner(s) ...")
        figures = measure_world(config_path, sleep_set, ranks, learners, iterations, out)
        points.append({"ranks": ranks, "learners": learners, **figures})
    local = calibrate(points, work)
    for p in points:
        p["model"] = predict(p["ranks"], p["learners"], work, local)
    physics_step = runenv_step_seconds()
    sac: dict[str, Any] = {}
    update_s = local.update_s
    if work.algorithm == "sac":
        if progress:
            progress("timing SAC gradient steps at minibatch sizes " + ", ".join(map(str, UPDATE_BATCH_SIZES)) + " ...")
        costs = update_costs(config, UPDATE_BATCH_SIZES)
        # the cluster's learner has a core of its own: its step costs what it does alone on one core here
        update_s = costs[config.sac.batch_size]
        sac = {"batch_size": config.sac.batch_size, "update_costs": {str(b): t for b, t in costs.items()}}
        sac["update_fit_s"] = list(fit_update_cost(list(costs), list(costs.values())))
    skip = work.frame_skip  # a decision (the model's step) sleeps `skip` env steps
    policy_overhead = max(local.step_s - skip * sleep_step_s, 0.0)  # forward pass and bookkeeping per decision
    # the cluster keeps this machine's learner speed and lrun's polite-wait cost, with its own links
    cluster = Machine(
        skip * physics_step + policy_overhead,
        local.learn_s_per_sample,
        latency_s,
        bandwidth_Bps,
        local.poll_s,
        update_s,
    )
    if sac:
        sac["layouts"] = sac_layouts(work, cluster, config.sac.batch_size, costs, PREDICTED_RANKS)
    predictions = []
    for ranks in PREDICTED_RANKS:
        for learners in sorted({1, learners_for(ranks, work, cluster)}):
            predictions.append(predict(ranks, learners, work, cluster))
    return {
        "config": config_path or "(defaults)",
        "overrides": overrides,
        "iterations": iterations,
        "sleep_step_s": sleep_step_s,
        "workload": as_dict(work),
        "measured": points,
        "local_machine": as_dict(local),
        "cluster_machine": as_dict(cluster),
        "runenv_fast_step_s": physics_step,
        "simulators_per_learner": simulators_per_learner(work, cluster),
        "predicted": predictions,
        **sac,
    }


def format_table(result: dict[str, Any]) -> str:
    """The measurements beside the model, then the cluster predictions."""
    w, local, cluster = result["workload"], result["local_machine"], result["cluster_machine"]
    sac = w.get("algorithm") == "sac"
    update = (
        f"SAC: {w['updates_per_step']} gradient steps per decision, frame skip {w['frame_skip']}, "
        f"{'overlapped' if w['overlap'] else 'synchronous'}, actor {w['parameters']} + critics "
        f"{w['critic_parameters']} parameters"
        if sac
        else f"{w['epochs']} epochs x {w['minibatches']} minibatches, {w['parameters']} parameters"
    )
    lines = [
        f"lrun bench scaling: {result['config']}, {w['envs_per_rank']} envs x {w['steps_per_env']} steps per "
        f"simulator, {update}",
        f"  messages: rollout {w['rollout_bytes'] / 1e3:.0f} kB per simulator, policy broadcast "
        f"{w['message_bytes'] / 1e3:.0f} kB",
        f"  this machine (calibrated): step {local['step_s'] * 1e3:.2f} ms "
        f"(Sleep-v0 {w.get('frame_skip', 1)} x {result['sleep_step_s'] * 1e3:.1f} ms + policy), "
        + (
            f"learner {local.get('update_s', 0.0) * 1e3:.2f} ms per gradient step, bandwidth "
            if sac
            else f"learner {local['learn_s_per_sample'] * 1e6:.1f} us/sample/epoch, bandwidth "
        )
        + f"{local['bandwidth_Bps'] / 1e9:.2f} GB/s, polite wait {local['poll_s'] * 1e3:.1f} ms per collective stage",
        "",
        "measured here (lrun/Sleep-v0) vs the model",
        f"{'ranks':>5} {'learners':>8} {'steps/s':>9} {'model':>9} {'error':>7} {'sim idle':>9} {'model':>7} "
        f"{'learn s':>8} {'xfer ms':>8} {'bcast ms':>9} {'moments ms':>11} {'grad ms/mb':>11}",
    ]
    work = Workload(**w)
    for p in result["measured"]:
        m = p["model"]
        sims, learners = p["ranks"] - p["learners"], p["learners"]
        # gradient steps per iteration (each an Allreduce per network among learners)
        minibatches = sac_updates(sims, learners, work) if sac else w["epochs"] * w["minibatches"]
        error = 100 * (m["steps_per_s"] - p["steps_per_s"]) / p["steps_per_s"]
        lines.append(
            f"{p['ranks']:>5} {p['learners']:>8} {p['steps_per_s']:>9.0f} {m['steps_per_s']:>9.0f} {error:>6.0f}% "
            f"{100 * p['time/simulator_wait_fraction']:>8.0f}% {100 * m['simulator_idle']:>6.0f}% "
            f"{p['time/learn_s']:>8.2f} {1e3 * p['time/mpi_recv_transfer_s']:>8.2f} "
            f"{1e3 * p['time/mpi_bcast_s']:>9.2f} {1e3 * p['time/mpi_allreduce_s']:>11.2f} "
            f"{1e3 * p['time/mpi_gradient_allreduce_s'] / minibatches:>11.3f}"
        )
    lines += [
        "",
        f"predicted on a cluster: RunEnv fast physics {result['runenv_fast_step_s'] * 1e3:.2f} ms + policy = step "
        f"{cluster['step_s'] * 1e3:.2f} ms, latency {cluster['latency_s'] * 1e6:.1f} us, bandwidth "
        f"{cluster['bandwidth_Bps'] / 1e9:.0f} GB/s; one learner keeps up with "
        f"{result['simulators_per_learner']:.0f} simulators",
        f"{'ranks':>5} {'learners':>8} {'steps/s':>10} {'iteration s':>12} {'sim idle':>9} {'learner idle':>13}",
    ]
    for p in result["predicted"]:
        lines.append(
            f"{p['ranks']:>5} {p['learners']:>8} {p['steps_per_s']:>10.0f} {p['iteration_s']:>12.2f} "
            f"{100 * p['simulator_idle']:>8.0f}% {100 * p['learner_idle']:>12.0f}%"
        )
    if result.get("layouts"):
        lines += ["", *format_layouts(result)]
    return "\n".join(lines)


def format_layouts(result: dict[str, Any]) -> list[str]:
    """SAC's fewer-larger-steps alternatives: the same samples of gradient per decision at other minibatches."""
    w = result["workload"]
    t0, t1 = result["update_fit_s"]
    samples = w["updates_per_step"] * result["batch_size"]
    lines = [
        f"SAC gradient step alone on one core: t_update(b) = {t0 * 1e3:.2f} ms + {t1 * 1e6:.1f} us x b; layouts "
        f"with the recipe's {samples:g} samples per decision (u b), cluster as above, enough learners",
        f"{'batch':>6} {'u':>8} {'t_update ms':>12} {'us/sample':>10} {'sims/learner':>13}"
        + "".join(f" {f'learners@{r}':>13} {f'steps/s@{r}':>13}" for r in PREDICTED_RANKS),
    ]
    for row in result["layouts"]:
        mark = " (recipe)" if row["batch_size"] == result["batch_size"] else ""
        lines.append(
            f"{row['batch_size']:>6} {row['updates_per_step']:>8.4g} {row['update_s'] * 1e3:>12.2f} "
            f"{row['update_s_per_sample'] * 1e6:>10.1f} {row['simulators_per_learner']:>13.1f}"
            + "".join(f" {row[f'learners_{r}']:>13} {row[f'steps_per_s_{r}']:>13.0f}" for r in PREDICTED_RANKS)
            + mark
        )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """Steps/s against ranks: measured points, the model through them, and the cluster prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = Workload(**result["workload"])
    local, cluster = Machine(**result["local_machine"]), Machine(**result["cluster_machine"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ranks = np.unique(np.geomspace(3, 1024, 40).astype(int))
    for machine, label, style in ((local, "model, this machine", "--"), (cluster, "model, cluster", "-")):
        one = [predict(r, 1, work, machine)["steps_per_s"] for r in ranks]
        left.plot(ranks, one, style, label=f"{label}, 1 learner")
        if machine is cluster:
            best = [predict(r, learners_for(r, work, machine), work, machine) for r in ranks]
            left.plot(ranks, [b["steps_per_s"] for b in best], ":", label=f"{label}, enough learners")
            right.plot(
                ranks,
                [100 * predict(r, 1, work, machine)["simulator_idle"] for r in ranks],
                "-",
                label="simulators idle, 1 learner",
            )
            right.plot(ranks, [100 * b["simulator_idle"] for b in best], ":", label="simulators idle, enough learners")
    measured = result["measured"]
    left.plot([p["ranks"] for p in measured], [p["steps_per_s"] for p in measured], "o", label="measured here")
    right.plot(
        [p["ranks"] for p in measured],
        [100 * p["time/simulator_wait_fraction"] for p in measured],
        "o",
        label="measured here",
    )
    left.set(xscale="log", yscale="log", xlabel="MPI ranks", ylabel="simulated env steps / s", title="throughput")
    right.set(xscale="log", xlabel="MPI ranks", ylabel="% of each iteration", title="simulators waiting")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict[str, Any], out: Path) -> list[Path]:
    """OUT/scaling.json, scaling.txt and scaling.png."""
    paths = [out / "scaling.json", out / "scaling.txt", out / "scaling.png"]
    paths[0].write_text(json.dumps(result, indent=1) + "\n")
    paths[1].write_text(format_table(result) + "\n")
    plot(result, paths[2])
    return paths


def main_progress(message: str) -> None:
    """Progress lines on stderr."""
    print(message, file=sys.stderr, flush=True)
