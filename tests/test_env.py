"""RunEnv on real OpenSim physics."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from lrun.env import ENV_ID, RunEnv, SerialVectorEnv
from lrun.env.layout import EpisodeLayout


def rollout(env: RunEnv, actions: np.ndarray) -> np.ndarray:
    """Observations after each action (stops at the end of the episode)."""
    out = []
    for a in actions:
        obs, _, terminated, truncated, _ = env.step(a)
        out.append(obs)
        if terminated or truncated:
            break
    return np.array(out)


def test_observation_at_reset():
    env = RunEnv(difficulty=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (41,) and obs.dtype == np.float64
    assert obs[0] == pytest.approx(-0.05)  # pelvis tilt
    assert obs[1] == 0.0  # pelvis x
    assert obs[2] == pytest.approx(0.91, abs=0.01)  # pelvis y
    assert np.all(obs[3:6] == 0.0)  # at rest
    assert obs[24:26] == pytest.approx(obs[1:3])  # pelvis body position equals the pelvis coordinates
    assert obs[22 + 1] > obs[26 + 1] > obs[2]  # head above torso above pelvis
    assert obs[29] < 0.1 and obs[31] < 0.1  # toes on the ground
    assert np.array_equal(obs[36:38], [1.0, 1.0])
    assert np.array_equal(obs[38:41], [100.0, 0.0, 0.0])


def test_gymnasium_registration_and_checker():
    env = gym.make(ENV_ID, difficulty=1)
    assert env.observation_space.shape == (41,) and env.action_space.shape == (18,)
    check_env(RunEnv(difficulty=2), skip_render_check=True)


def test_observation_shows_the_next_obstacle_and_psoas_at_difficulty_2():
    env = RunEnv(difficulty=2, max_obstacles=10)
    obs, info = env.reset(seed=3)
    layout = info["layout"]
    assert len(layout.obstacles) == 10
    assert obs[36:38] == pytest.approx(layout.psoas)
    assert obs[38:41] == pytest.approx(layout.obstacles[0] - [obs[1], 0, 0])


def test_muscle_order_and_action_errors():
    env = RunEnv()
    env.reset(seed=0)
    assert env.muscle_names[:4] == ("hamstrings_r", "bifemsh_r", "glut_max_r", "iliopsoas_r")
    assert env.muscle_names[12] == "iliopsoas_l" and len(env.muscle_names) == 18
    with pytest.raises(ValueError, match=r"shape \(18,\)"):
        env.step(np.zeros(17))
    bad = np.zeros(18)
    bad[4] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*rect_fem_r"):
        env.step(bad)
    # out-of-range values are clipped, so they act exactly like 0 and 1
    a, b = RunEnv(), RunEnv()
    a.reset(seed=0), b.reset(seed=0)
    raw = np.linspace(-1.0, 2.0, 18)
    assert np.array_equal(a.step(raw)[0], b.step(np.clip(raw, 0, 1))[0])


def test_same_seed_same_actions_bit_identical_and_no_carry_over(actions):
    a = RunEnv(difficulty=2, max_obstacles=10)
    b = RunEnv(difficulty=2, max_obstacles=10)
    a.reset(seed=11)
    rollout(a, np.ones((20, 18)))  # leave a in a very different state, with excitations at 1
    obs_a, _ = a.reset(seed=42)
    obs_b, _ = b.reset(seed=42)
    assert np.array_equal(obs_a, obs_b)
    assert np.array_equal(rollout(a, actions[:60]), rollout(b, actions[:60]))


def test_instances_do_not_share_random_state():
    a, b = RunEnv(difficulty=2), RunEnv(difficulty=2)
    a.reset(seed=5)
    first = [a.reset()[1]["layout"] for _ in range(3)]
    a.reset(seed=5)
    b.reset(seed=99)
    second = []
    for _ in range(3):
        b.reset()  # interleaved draws on another instance must not disturb a's stream
        second.append(a.reset()[1]["layout"])
    assert first == second


DETERMINISM_SCRIPT = textwrap.dedent(
    """
    import hashlib, numpy as np
    from lrun.env import RunEnv
    env = RunEnv(difficulty=2, max_obstacles=10)
    obs, _ = env.reset(seed=2024)
    h = hashlib.sha256(obs.tobytes())
    for a in np.random.default_rng(7).uniform(0, 1, (40, 18)):
        obs, r, te, tr, _ = env.step(a)
        h.update(obs.tobytes()); h.update(np.float64(r).tobytes())
        if te or tr:
            break
    print(h.hexdigest())
    """
)


def test_determinism_across_processes():
    digests = [
        subprocess.run(
            [sys.executable, "-c", DETERMINISM_SCRIPT], capture_output=True, text=True, check=True, timeout=120
        ).stdout.strip()
        for _ in range(2)
    ]
    assert len(digests[0]) == 64
    assert digests[0] == digests[1]


def test_save_restore_is_bit_exact_in_the_same_and_another_instance(actions):
    env = RunEnv(difficulty=2, max_obstacles=10)
    env.reset(seed=8)
    rollout(env, actions[:30])
    snapshot = env.get_state()
    assert isinstance(snapshot["state_variables"], np.ndarray) and snapshot["step"] == 30
    expected = rollout(env, actions[30:80])

    other = RunEnv(difficulty=0, max_obstacles=10)  # different difficulty and a fresh model
    other.reset(seed=1)
    other.set_state(snapshot)
    assert other.step_count == 30 and other.layout == env.layout
    assert np.array_equal(rollout(other, actions[30:80]), expected)

    env.set_state(snapshot)  # and back in the original instance, after it moved on
    assert np.array_equal(rollout(env, actions[30:80]), expected)


def test_set_state_rejects_incomplete_or_oversized_snapshots():
    env = RunEnv(difficulty=2, max_obstacles=10)
    env.reset(seed=0)
    snapshot = env.get_state()
    small = RunEnv(max_obstacles=3)
    with pytest.raises(ValueError, match="max_obstacles=3"):
        small.set_state(snapshot)
    del snapshot["time"]
    with pytest.raises(ValueError, match="time"):
        env.set_state(snapshot)


def test_an_obstacle_at_the_feet_changes_the_motion_and_a_distant_one_does_not():
    plain = RunEnv(max_obstacles=1)
    obs0, _ = plain.reset(seed=0)
    toes_x = max(obs0[28], obs0[30])
    actions = np.full((60, 18), 0.05)
    free = rollout(plain, actions)

    def run_with(obstacle):
        env = RunEnv(max_obstacles=1)
        obs, _ = env.reset(seed=0, options={"layout": EpisodeLayout(np.array([obstacle]))})
        assert obs[38:41] == pytest.approx(np.array(obstacle) - [obs[1], 0, 0])
        return rollout(env, actions)

    far = run_with([50.0, 0.0, 0.1])
    assert np.array_equal(far[:, :38], free[:, :38])  # no contact, no effect
    under_feet = run_with([toes_x - 0.05, 0.0, 0.1])  # a 10 cm bump under the forefoot
    deviation = np.max(np.abs(under_feet[:, :36] - free[:, :36]))
    assert deviation > 0.01, f"an obstacle under the foot barely moved anything ({deviation})"


def test_cheap_physics_is_close_to_but_not_the_reference(actions):
    ref, fast = RunEnv(physics="reference"), RunEnv(physics="fast")
    ref.reset(seed=0), fast.reset(seed=0)
    a, b = rollout(ref, actions[:50]), rollout(fast, actions[:50])
    n = min(len(a), len(b))
    deviation = np.max(np.abs(a[:n, 1:3] - b[:n, 1:3]))
    assert 0 < deviation < 0.05


def test_integrator_exception_ends_the_episode_not_the_process():
    env = RunEnv()
    env.reset(seed=0)
    snapshot = env.get_state()
    snapshot["time"] = 1e20  # t + 0.01 == t: OpenSim's Manager.integrate raises
    env.set_state(snapshot)
    obs, reward, terminated, truncated, info = env.step(np.full(18, 0.5))
    assert info["integrator_failure"] is True and "final time" in info["failure"]
    assert terminated and not truncated and reward == 0.0 and np.all(np.isfinite(obs))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(18))
    env.reset(seed=0)
    assert env.step(np.full(18, 0.5))[4]["integrator_failure"] is False


@pytest.mark.parametrize("value", [np.nan, 1e7])
def test_non_finite_or_exploded_state_counts_as_integrator_failure(value):
    env = RunEnv()
    env.reset(seed=0)
    snapshot = env.get_state()
    snapshot["state_variables"][1] = value  # pelvis tilt speed
    env.set_state(snapshot)
    obs, _reward, terminated, _, info = env.step(np.full(18, 0.5))
    assert terminated and info["integrator_failure"] and np.all(np.isfinite(obs))
    assert "not finite or has exploded" in info["failure"]
    env.reset(seed=0)
    assert env.step(np.full(18, 0.5))[4]["integrator_failure"] is False


def test_episode_truncates_at_1000_steps_not_terminates():
    env = RunEnv()
    env.reset(seed=0)
    snapshot = env.get_state()
    snapshot["step"] = 998
    env.set_state(snapshot)
    _, _, terminated, truncated, _ = env.step(np.full(18, 0.05))
    assert not terminated and not truncated
    _, _, terminated, truncated, _ = env.step(np.full(18, 0.05))
    assert truncated and not terminated


def test_falling_terminates_with_pelvis_below_065():
    env = RunEnv()
    env.reset(seed=0)
    observations = rollout(env, np.zeros((300, 18)))  # limp: the model collapses
    assert len(observations) < 300
    assert observations[-1][2] < 0.65 <= observations[-2][2]


def test_reward_is_progress_minus_ligament_penalty(actions):
    env = RunEnv()
    obs, _ = env.reset(seed=0)
    for a in actions[:20]:
        new_obs, reward, *_, info = env.step(a)
        assert info["delta_x"] == pytest.approx(new_obs[1] - obs[1], abs=0)
        assert reward == pytest.approx(info["delta_x"] - info["ligament_penalty"], abs=1e-15)
        assert info["ligament_penalty"] >= 0
        obs = new_obs


def test_vector_env_auto_resets_with_per_env_seeds():
    def make_vec() -> SerialVectorEnv:
        return SerialVectorEnv([lambda: RunEnv(difficulty=1) for _ in range(2)], seed=3)

    vec = make_vec()
    obs, infos = vec.reset()
    assert obs.shape == (2, 41)
    first_seeds = [info["episode_seed"] for info in infos]
    assert first_seeds[0] != first_seeds[1]
    finished = {}
    for _ in range(400):
        obs, _rewards, terminated, truncated, infos = vec.step(np.zeros((2, 18)))  # limp: both fall
        for i, info in enumerate(infos):
            if (terminated[i] or truncated[i]) and i not in finished:
                finished[i] = info
                # the returned observation starts the next episode; the last one is kept for bootstrapping
                assert obs[i][1] == 0.0 and obs[i][2] == pytest.approx(0.91, abs=0.01)
                assert info["final_observation"][2] < 0.65
                assert info["episode"]["seed"] == first_seeds[i]
                assert info["reset_info"]["episode_seed"] not in first_seeds
        if len(finished) == 2:
            break
    assert set(finished) == {0, 1}
    assert all(info["episode"]["length"] > 10 for info in finished.values())
    # reproducible: the same base seed gives the same episode seeds
    assert [info["episode_seed"] for info in make_vec().reset()[1]] == first_seeds


def test_init_speed_pushes_training_episodes_and_the_default_starts_at_rest():
    """A push (`init_speed`) is a training aid: the body starts moving forwards, the feet slip, and without a
    step the skeleton falls; the task (and `lrun eval`) starts at rest."""
    from lrun.config import EnvConfig
    from lrun.evaluate import EvalSettings, eval_env_config

    rest = RunEnv(physics="fast")
    obs, _ = rest.reset(seed=3)
    assert obs[4] == 0.0  # pelvis forward speed
    pushed = RunEnv(physics="fast", init_speed=[0.6, 1.0])
    speeds = [pushed.reset(seed=s)[0][4] for s in range(6)]
    assert all(0.6 <= v <= 1.0 for v in speeds) and len(set(speeds)) == 6
    assert pushed.reset(seed=2)[0][4] == speeds[2]  # drawn from the episode's seed
    # the layout draw is unchanged by the push (same obstacles for the same seed)
    assert RunEnv(physics="fast", init_speed=1.0).reset(seed=5)[1]["layout"] == rest.reset(seed=5)[1]["layout"]
    # a constant push with zero excitations: the body slides on, then falls within a second or so
    fixed = RunEnv(physics="fast", init_speed=1.0)
    obs, _ = fixed.reset(seed=0)
    assert obs[4] == 1.0
    for _ in range(300):
        obs, _, terminated, *_ = fixed.step(np.zeros(18))
        if terminated:
            break
    assert terminated and fixed.step_count < 200
    for bad in (-0.1, [1.0, 0.5], [0.0, 9.0], "fast", [0.1]):
        with pytest.raises(ValueError, match="init_speed"):
            RunEnv(physics="fast", init_speed=bad)
    # lrun eval's env carries no env kwargs: every evaluated episode starts at rest
    train_env = vars(EnvConfig(physics="fast", frame_skip=4, kwargs={"init_speed": [0.0, 1.0]}))
    assert eval_env_config(train_env, EvalSettings()).kwargs == {"weakening": "graders-2017"}  # never the push


def test_obstacle_radius_scale_trains_on_bigger_obstacles_and_lrun_eval_draws_the_task_s():
    """`obstacle_radius_scale` grows every obstacle of a seed's layout (in the model too: the observation's next
    obstacle) and nothing else; lrun eval and `Agent.make_env` leave it out."""
    from lrun.api import TRAINING_ONLY_KWARGS
    from lrun.config import EnvConfig
    from lrun.evaluate import EvalSettings, eval_env_config

    task = RunEnv(difficulty=2, max_obstacles=10, physics="fast")
    big = RunEnv(difficulty=2, max_obstacles=10, physics="fast", obstacle_radius_scale=0.15)
    (obs, info), (big_obs, big_info) = task.reset(seed=8), big.reset(seed=8)
    radii, big_radii = info["layout"].obstacles[:, 2], big_info["layout"].obstacles[:, 2]
    assert np.allclose(big_radii - 0.05, 3 * (radii - 0.05)) and info["layout"].psoas == big_info["layout"].psoas
    assert big_obs[40] == big_radii[0] and obs[40] == radii[0] and np.array_equal(obs[:38], big_obs[:38])
    for bad in (0, -0.1, 0.6, "big", True):
        with pytest.raises(ValueError, match="obstacle_radius_scale"):
            RunEnv(physics="fast", obstacle_radius_scale=bad)
    train_env = vars(EnvConfig(difficulty=2, max_obstacles=10, kwargs={"obstacle_radius_scale": 0.1}))
    assert eval_env_config(train_env, EvalSettings()).kwargs == {"weakening": "graders-2017"}
    assert "obstacle_radius_scale" in TRAINING_ONLY_KWARGS


def test_rgb_array_render_mode_gives_the_stick_figure_frames_gymnasium_wrappers_collect():
    """RunEnv(render_mode="rgb_array") feeds gymnasium's frame wrappers (RecordVideo records the same frames)."""
    env = gym.wrappers.RenderCollection(RunEnv(physics="fast", render_mode="rgb_array"))
    env.reset(seed=0)
    for _ in range(10):
        env.step(np.full(18, 0.3))
    frames = env.render()
    assert len(frames) == 11 and frames[0].shape == (352, 400, 3) and frames[0].dtype == np.uint8
    assert np.abs(frames[0].astype(int) - frames[-1]).sum() > 0  # the figure moved
    # an obstacle just ahead is drawn
    bare = RunEnv(physics="fast", render_mode="rgb_array")
    bare.reset(options={"layout": EpisodeLayout()})
    blocked = RunEnv(physics="fast", max_obstacles=1, render_mode="rgb_array")
    blocked.reset(options={"layout": EpisodeLayout(np.array([[0.6, 0.05, 0.1]]))})
    assert np.abs(bare.render().astype(int) - blocked.render()).sum() > 1000
    assert RunEnv(physics="fast").render() is None  # no render mode: no frames
    with pytest.raises(ValueError, match="render_mode"):
        RunEnv(physics="fast", render_mode="human")


def test_without_the_model_files_runenv_says_how_to_get_them(monkeypatch):
    """`pip install -e .` without the Makefile lacks osim-rl's model files: one line says what to install."""
    import importlib.util

    from lrun.env import model

    real = importlib.util.find_spec
    monkeypatch.delenv("LRUN_MODEL_FILE", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "osim" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps osim-rl==3\.0\.11 \(or run `make install`\)"):
        RunEnv(physics="fast")
    assert model.MODEL_FILE_NAME == "gait9dof18musc.osim"


def test_the_sleep_stand_in_has_runenvs_shapes_and_step_time_and_no_cpu_cost():
    from lrun.env.factory import make_env

    env = make_env("lrun/Sleep-v0", kwargs={"step_seconds": 0.004, "episode_steps": 25})
    obs, _ = env.reset(seed=3)
    assert obs.shape == (41,) and env.action_space.shape == (18,)
    again, _ = env.reset(seed=3)
    assert np.array_equal(obs, again)
    wall, cpu = time.perf_counter(), time.process_time()
    for t in range(25):
        obs, _, terminated, truncated, _ = env.step(np.full(18, 0.5, np.float32))
        assert not terminated and truncated == (t == 24)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall >= 25 * 0.004 and cpu < wall / 2  # asleep, not computing
    with pytest.raises(ValueError, match="18 finite excitations"):
        env.step(np.full(18, np.nan))
    with pytest.raises(ValueError, match="step_seconds"):
        make_env("lrun/Sleep-v0", kwargs={"step_seconds": -1})
    check_env(make_env("lrun/Sleep-v0", kwargs={"step_seconds": 0.0}), skip_render_check=True)
