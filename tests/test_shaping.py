"""Reward shaping: named terms, the wrapper on real OpenSim, config checks, and what a shaped run stores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lrun.config import ConfigError, build_config
from lrun.env.factory import make_env
from lrun.env.shaping import STEP_SECONDS, TERMS, ShapingParams, StepCounter, term_values
from lrun.store.reader import RunStore

LRUN = str(Path(sys.executable).parent / "lrun")


def obs_with(knee_r: float = 0.0, knee_l: float = 0.0, tilt: float = 0.0) -> np.ndarray:
    obs = np.zeros(41)
    obs[0], obs[7], obs[10] = tilt, knee_r, knee_l
    return obs


def test_terms():
    p = ShapingParams(speed_cap=1.0, speed_target=2.0, knee_bend_max=0.5)
    info = {"delta_x": 0.03, "ligament_penalty": 0.002}  # 3 m/s
    t = term_values(obs_with(), obs_with(knee_r=-0.2, knee_l=-0.9, tilt=0.1), info, p)
    assert set(t) == set(TERMS)
    assert t["progress"] == 0.03 and t["ligament"] == -0.002
    assert t["capped_progress"] == pytest.approx(1.0 * STEP_SECONDS)  # 3 m/s counted as 1 m/s
    assert t["knee_bend"] == pytest.approx((0.2 + 0.5) / 2 * STEP_SECONDS)  # flexion, the left one capped
    assert t["speed_target"] == pytest.approx(-1.0 * STEP_SECONDS)
    assert t["alive"] == STEP_SECONDS and t["upright"] == pytest.approx(-0.1 * STEP_SECONDS)
    slow = term_values(obs_with(), obs_with(knee_r=0.1), {"delta_x": 0.005, "ligament_penalty": 0.0}, p)
    assert slow["capped_progress"] == 0.005 and slow["knee_bend"] == 0.0  # hyperextension earns nothing
    assert t["knee_hyperextension"] == 0.0  # flexed knees are not penalised


def test_knee_hyperextension_counts_extension_past_the_threshold_on_both_knees():
    p = ShapingParams(knee_extension_max=0.1)
    info = {"delta_x": 0.0, "ligament_penalty": 0.0}
    t = term_values(obs_with(), obs_with(knee_r=0.4, knee_l=0.05), info, p)
    assert t["knee_hyperextension"] == pytest.approx(-(0.4 - 0.1) * STEP_SECONDS)  # the left is within 0.1
    both = term_values(obs_with(), obs_with(knee_r=0.4, knee_l=0.3), info, p)["knee_hyperextension"]
    assert both == pytest.approx(-(0.3 + 0.2) * STEP_SECONDS)
    lenient = term_values(obs_with(), obs_with(knee_r=0.4), info, ShapingParams(knee_extension_max=0.5))
    assert lenient["knee_hyperextension"] == 0.0


def test_head_ahead_penalises_a_head_behind_the_pelvis_only():
    behind, ahead = obs_with(), obs_with()
    behind[1], behind[22] = 3.0, 2.8  # pelvis x, head x: the head 0.2 m behind
    ahead[1], ahead[22] = 3.0, 3.1
    info = {"delta_x": 0.0, "ligament_penalty": 0.0}
    assert term_values(obs_with(), behind, info, ShapingParams())["head_ahead"] == pytest.approx(-0.2 * STEP_SECONDS)
    assert term_values(obs_with(), ahead, info, ShapingParams())["head_ahead"] == 0.0


def test_fall_is_paid_once_on_the_step_that_ends_the_episode_by_falling():
    info = {"delta_x": 0.0, "ligament_penalty": 0.0}
    assert term_values(obs_with(), obs_with(), info, ShapingParams(), fell=True)["fall"] == -1.0
    assert term_values(obs_with(), obs_with(), info, ShapingParams())["fall"] == 0.0
    # on the real skeleton: zero excitations fall within ~1 s; only that last step pays the penalty
    env = make_env("lrun/Run-v0", physics="fast", reward_weights={"fall": 10.0}, shaping=ShapingParams())
    env.reset(seed=0)
    paid = []
    terminated = truncated = False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(np.zeros(18))
        paid.append(reward)
    assert terminated and not info["integrator_failure"]
    assert paid[-1] == -10.0 and all(r == 0.0 for r in paid[:-1])


def test_shaped_env_reports_every_term_and_the_task_reward():
    weights = {"progress": 1.0, "ligament": 1.0, "knee_bend": 2.0, "alive": 0.5}
    shaped = make_env("lrun/Run-v0", physics="fast", reward_weights=weights, shaping=ShapingParams())
    plain = make_env("lrun/Run-v0", physics="fast")
    shaped.reset(seed=3), plain.reset(seed=3)
    assert shaped.get_wrapper_attr("reward_terms") == (
        "delta_x",
        "ligament_penalty",
        "task_reward",
        "shaping_progress",
        "shaping_ligament",
        "shaping_knee_bend",
        "shaping_alive",
    )
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = rng.uniform(0, 1, 18)
        _, reward, *_, info = shaped.step(a)
        _, task_reward, *_ = plain.step(a)
        assert info["task_reward"] == task_reward  # the physics is untouched
        expected = sum(w * info[f"shaping_{n}"] for n, w in weights.items())
        assert reward == pytest.approx(expected, abs=1e-12)
        assert info["shaping_alive"] == STEP_SECONDS and reward > task_reward


def test_frame_skip_sums_the_terms():
    env = make_env("lrun/Run-v0", physics="fast", frame_skip=3, reward_weights={"alive": 1.0}, shaping=ShapingParams())
    env.reset(seed=0)
    _, reward, *_, info = env.step(np.full(18, 0.1))
    assert reward == pytest.approx(3 * STEP_SECONDS) and info["shaping_alive"] == pytest.approx(3 * STEP_SECONDS)
    assert "task_reward" in info and info["frames"] == 3  # simulated steps, for the env-step counters


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["reward.weights={knees = 1.0}"], "reward.weights: unknown reward term 'knees'"),
        (["reward.weights={alive = 'lots'}"], "weight must be a number"),
        (["env.id=gymnasium:Pendulum-v1", "reward.weights={alive = 1.0}"], "needs env.id = lrun/Run-v0"),
    ],
)
def test_bad_shaping_config(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config({}, overrides)


def test_a_shaped_run_logs_and_stores_task_and_shaped_rewards(tmp_path):
    run_dir = tmp_path / "shaped"
    result = subprocess.run(
        [
            LRUN,
            "train",
            "--set",
            "env.physics=fast",
            "--set",
            "layout.envs_per_rank=2",
            "--set",
            "ppo.steps_per_env=100",
            "--set",
            "ppo.minibatches=4",
            "--set",
            "ppo.epochs=1",
            "--set",
            "run.iterations=2",
            "--set",
            "reward.weights={progress = 1.0, ligament = 1.0, alive = 0.2}",
            "--set",
            f"run.run_dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with RunStore(run_dir) as store:
        steps = store.steps()
        episodes = store.episodes(["return", "task_return", "length"])
    shaped = (
        steps["reward_terms/shaping_progress"]
        + steps["reward_terms/shaping_ligament"]
        + 0.2 * steps["reward_terms/shaping_alive"]
    )
    assert np.allclose(steps["reward"], shaped, atol=1e-6)
    task = steps["reward_terms/delta_x"] - steps["reward_terms/ligament_penalty"]
    assert np.allclose(steps["reward_terms/task_reward"], task, atol=1e-6)
    assert len(episodes["return"]) > 0
    assert np.allclose(episodes["return"] - episodes["task_return"], 0.2 * STEP_SECONDS * episodes["length"])
    import csv

    with open(run_dir / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert "charts/episodic_task_return" in rows[0]
    for row in rows:  # each term is logged as its mean per step
        assert float(row["reward/shaping_alive"]) == pytest.approx(STEP_SECONDS, rel=1e-5)
        assert float(row["reward/task_reward"]) == pytest.approx(
            float(row["reward/delta_x"]) - float(row["reward/ligament_penalty"]), abs=1e-6
        )


def feet(pelvis_x: float, left_ahead: float) -> np.ndarray:
    """An observation with the pelvis at `pelvis_x` and the left ankle `left_ahead` m ahead of the right."""
    obs = obs_with()
    obs[1] = pelvis_x
    obs[32], obs[34] = pelvis_x + left_ahead / 2, pelvis_x - left_ahead / 2
    return obs


def test_footsteps_count_alternating_feet_that_carry_the_pelvis_forward():
    counter = StepCounter(ShapingParams(step_margin=0.05, step_advance=0.1))
    counter.reset(feet(0.0, 0.0))  # feet level: nobody leads yet
    walk = [feet(0.05, 0.2), feet(0.2, -0.2), feet(0.4, 0.2), feet(0.6, -0.2)]
    assert [counter.update(o) for o in walk] == [0.0, 1.0, 1.0, 1.0]  # the first lead is no step yet
    counter.reset(feet(0.0, 0.2))
    in_place = [feet(0.0, -0.2), feet(0.02, 0.2), feet(0.04, -0.2)]  # legs swing, the pelvis stays
    assert sum(counter.update(o) for o in in_place) == 0.0
    counter.reset(feet(0.0, 0.2))
    jitter = [feet(0.3, 0.03), feet(0.6, -0.03), feet(0.9, 0.04)]  # within the margin: the left foot still leads
    assert sum(counter.update(o) for o in jitter) == 0.0
    assert counter.update(feet(1.2, -0.1)) == 1.0


def test_footstep_term_on_the_real_skeleton_is_reported_and_resets():
    env = make_env("lrun/Run-v0", physics="fast", reward_weights={"footstep": 1.0}, shaping=ShapingParams())
    env.reset(seed=0)
    _, reward, *_, info = env.step(np.full(18, 0.05))
    assert info["shaping_footstep"] == reward == 0.0  # standing still from the initial pose is no step
    assert env.get_wrapper_attr("steps").lead == 0  # the initial pose has level feet
