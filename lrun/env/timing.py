"""Timing the environment (`lrun bench env`): how much RunEnv adds to OpenSim's own integration, the physics
presets' speeds, memory over many resets, and the single-process env rate the training benchmark compares with.

All figures come from this machine, now; the README quotes a run of `make bench`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from lrun.env.physics import PRESETS, Physics, resolve_physics
from lrun.memory import rss_mb


@dataclass
class EnvBenchResult:
    """Figures printed by `lrun bench env`."""

    steps: int
    env_steps_per_s: float
    bare_steps_per_s: float
    overhead: float
    trajectories_identical: bool
    presets: dict[str, dict[str, float]] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)


def _episode_actions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random excitations, the worst case for the integrator (see the facts file)."""
    return rng.uniform(0.0, 1.0, (n, 18))


def measure_env_vs_bare(steps: int, physics: Physics, seed: int = 0, rounds: int = 5) -> tuple[float, float, bool]:
    """Steps/s of `RunEnv.step` and of a bare `Manager.integrate` loop on the same model, physics and actions.

    The bare loop drives the very `opensim.Model` the env built (same obstacle slots) with raw OpenSim calls:
    set the 18 controls, re-initialise the Manager, integrate 0.01 s. Resets are not timed in either.
    Returns (env rate, bare rate, whether both produced the same pelvis trajectory bit for bit).
    """
    import opensim

    from lrun.env.run_env import RunEnv

    env = RunEnv(difficulty=0, physics=physics)
    actions = _episode_actions(np.random.default_rng(seed), steps)
    model = env.sim.model
    controller = opensim.PrescribedController.safeDownCast(model.getControllerSet().get(0))
    manager = opensim.Manager(model)
    manager.setIntegratorMethod(getattr(opensim.Manager, "IntegratorMethod_" + _opensim_method(physics)))
    manager.setIntegratorAccuracy(physics.accuracy)
    manager.setIntegratorMinimumStepSize(physics.min_step)
    manager.setWriteToStorage(False)
    manager.setPerformAnalyses(False)
    pelvis_x = model.getCoordinateSet().get("pelvis_tx")
    pelvis_y = model.getCoordinateSet().get("pelvis_ty")

    def run_env() -> tuple[float, list[float]]:
        env.reset(seed=seed)
        xs, elapsed = [], 0.0
        for a in actions:
            t0 = time.perf_counter()
            obs, _, terminated, truncated, _ = env.step(a)
            elapsed += time.perf_counter() - t0
            xs.append(obs[1])
            if terminated or truncated:
                env.reset(seed=seed)
        return steps / elapsed, xs

    def run_bare() -> tuple[float, list[float]]:
        functions = controller.get_ControlFunctions()
        constants = [opensim.Constant.safeDownCast(functions.get(i)) for i in range(functions.getSize())]

        def fresh_state():
            for c in constants:
                c.setValue(0.0)
            s = model.initializeState()
            model.equilibrateMuscles(s)
            return s

        state = fresh_state()
        xs, elapsed = [], 0.0
        for a in actions:
            t0 = time.perf_counter()
            for c, v in zip(constants, a.tolist()):
                c.setValue(v)
            manager.initialize(state)
            state = manager.integrate(state.getTime() + 0.01)
            elapsed += time.perf_counter() - t0
            xs.append(pelvis_x.getValue(state))
            if pelvis_y.getValue(state) < 0.65:
                state = fresh_state()
        return steps / elapsed, xs

    env_rates, bare_rates = [], []
    identical = True
    for _ in range(rounds):  # interleaved, so drifts of the machine hit both alike
        rate, xs_env = run_env()
        env_rates.append(rate)
        rate, xs_bare = run_bare()
        bare_rates.append(rate)
        identical &= xs_env == xs_bare
    # best of the rounds: timing noise on a shared machine only ever slows a round down
    return max(env_rates), max(bare_rates), identical


def _opensim_method(physics: Physics) -> str:
    from lrun.env.physics import INTEGRATORS

    return INTEGRATORS[physics.integrator]


def measure_presets(steps: int = 100, seed: int = 0) -> dict[str, dict[str, float]]:
    """Steps/s of each preset and the max deviation of pelvis (x, y) from the reference over `steps` steps."""
    from lrun.env.run_env import RunEnv

    # A smooth gait-like excitation pattern keeps the model up for the 100 steps, so deviations compare
    # like with like (random excitations topple it at ~115 steps).
    k = np.arange(steps)[:, None]
    actions = np.clip(0.3 + 0.3 * np.sin(k / 10.0 + np.arange(18)[None, :]), 0.0, 1.0)
    trajectories, rates = {}, {}
    for name, physics in PRESETS.items():
        env = RunEnv(physics=physics)
        env.reset(seed=seed)
        pelvis, t0 = [], time.perf_counter()
        for a in actions:
            obs, _, terminated, truncated, _ = env.step(a)
            pelvis.append(obs[1:3])
            if terminated or truncated:
                break
        rates[name] = len(pelvis) / (time.perf_counter() - t0)
        trajectories[name] = np.array(pelvis)
    reference = trajectories["accurate"]
    out = {}
    for name in PRESETS:
        n = min(len(reference), len(trajectories[name]))
        deviation = float(np.max(np.abs(trajectories[name][:n] - reference[:n])))
        out[name] = {"steps_per_s": rates[name], "max_pelvis_deviation_m": deviation, "steps_compared": n}
    return out


def measure_memory(steps: int, physics: Physics, progress: bool = True) -> dict[str, float]:
    """RSS growth over `steps` env steps with resets at difficulty 2 (a model rebuild every episode)."""
    from lrun.env.run_env import RunEnv

    env = RunEnv(difficulty=2, max_obstacles=10, physics=physics)
    rng = np.random.default_rng(1)
    env.reset(seed=0)
    warmup = min(1000, steps // 10)
    resets = 0
    start = rss_mb()
    for i in range(steps + warmup):
        if i == warmup:
            start = rss_mb()
        _, _, terminated, truncated, _ = env.step(rng.uniform(0.0, 1.0, 18))
        if terminated or truncated:
            env.reset()
            resets += 1
        if progress and (i + 1) % 5000 == 0:
            print(f"  memory soak: {i + 1}/{steps + warmup} steps, RSS {rss_mb():.1f} MB", file=sys.stderr, flush=True)
    end = rss_mb()
    return {"steps": steps, "resets": resets, "rss_start_mb": start, "rss_end_mb": end, "growth_mb": end - start}


def bench_env(steps: int = 2000, memory_steps: int = 20000, physics: str = "accurate") -> EnvBenchResult:
    """Run every env benchmark and return the figures."""
    chosen = resolve_physics(physics)
    env_rate, bare_rate, identical = measure_env_vs_bare(steps, chosen)
    result = EnvBenchResult(
        steps=steps,
        env_steps_per_s=env_rate,
        bare_steps_per_s=bare_rate,
        overhead=bare_rate / env_rate - 1.0,
        trajectories_identical=identical,
    )
    result.presets = measure_presets()
    if memory_steps > 0:
        result.memory = measure_memory(memory_steps, PRESETS["fast"])
    return result


def format_env_bench(result: EnvBenchResult, physics: str) -> str:
    """Human-readable report of `bench_env`."""
    lines = [
        f"env vs bare integration ({physics} physics, {result.steps} random-excitation steps, best of 5):",
        f"  RunEnv.step            {result.env_steps_per_s:8.1f} steps/s",
        f"  bare Manager.integrate {result.bare_steps_per_s:8.1f} steps/s",
        f"  env overhead           {100 * result.overhead:+8.2f} %   (goal <= 5 %)",
        f"  same trajectory        {'yes, bit for bit' if result.trajectories_identical else 'NO'}",
        "physics presets (100 steps of a smooth excitation pattern; deviation of pelvis x, y from accurate):",
    ]
    for name, row in result.presets.items():
        preset = PRESETS[name]
        lines.append(
            f"  {name:10s} {preset.integrator:22s} acc {preset.accuracy:<7g} {row['steps_per_s']:8.1f} steps/s"
            f"   max deviation {row['max_pelvis_deviation_m']:.2e} m"
        )
    if result.memory:
        m = result.memory
        lines.append(
            f"memory: {m['steps']} steps with {m['resets']} resets (difficulty 2, fast physics): RSS "
            f"{m['rss_start_mb']:.1f} -> {m['rss_end_mb']:.1f} MB, growth {m['growth_mb']:+.1f} MB (goal < 10 MB)"
        )
    return "\n".join(lines)


def result_json(result: EnvBenchResult) -> str:
    """JSON form of the figures, for machines."""
    return json.dumps(result.__dict__, indent=2)


def initial_policy_actions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Excitations distributed like an untrained lrun policy's: N(0.5, 0.3) clipped to [0, 1]."""
    return np.clip(rng.normal(0.5, 0.5 * np.exp(-0.5), (n, 18)), 0.0, 1.0)


def single_process_env_rate(physics: str, steps: int, seed: int = 0) -> float:
    """Steps/s of one RunEnv stepped alone in this process with initial-policy-like excitations."""
    from lrun.env.run_env import RunEnv

    env = RunEnv(physics=physics)
    env.reset(seed=seed)
    actions = initial_policy_actions(np.random.default_rng(seed), steps)
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def concurrent_env_rate(physics: str, steps: int, processes: int) -> float:
    """Combined steps/s of `processes` single-env loops running at once: what the cores allow together."""
    import subprocess

    code = (
        "import sys; from lrun.env.timing import single_process_env_rate; "
        f"print(single_process_env_rate({physics!r}, {steps}, seed=int(sys.argv[1])))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, text=True)
        for i in range(processes)
    ]
    rates = [float(p.communicate()[0]) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a concurrent env-rate process failed")
    return sum(rates)
