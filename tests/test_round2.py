"""The 2017 round-2 task as its graders ran it (stanfordnmbl/osim-rl 48494f5, osim/env/run.py and osim.py):
their integrator, their muscle weakening, and `lrun eval --setting round2`. Real OpenSim."""

from __future__ import annotations

import json

import numpy as np
import opensim
import pytest
from helpers import LRUN, ROOT, run

from lrun.analysis.replay import replay_episode
from lrun.env.layout import WEAKENING, EpisodeLayout
from lrun.env.model import GaitModel
from lrun.env.physics import PRESETS, resolve_physics
from lrun.env.run_env import RunEnv
from lrun.env.settings import SETTINGS, setting_name

# The 2017 RunEnv's constants (osim/env/run.py at 48494f5)
MUSCLES_PSOAS_R, MUSCLES_PSOAS_L = 3, 11
STEPSIZE, TIMESTEP_LIMIT = 0.01, 1000


def test_the_graders_weakened_muscles_are_indices_3_and_11_of_the_muscle_set():
    assert WEAKENING["graders-2017"] == (MUSCLES_PSOAS_L, MUSCLES_PSOAS_R)  # observation order: left, right
    env = RunEnv(difficulty=2, max_obstacles=0)
    muscles = env.sim.model.getMuscles()
    assert muscles.get(MUSCLES_PSOAS_L).getName() == "glut_max_l" and env.sim.weakened_muscles[0] == "glut_max_l"
    assert muscles.get(MUSCLES_PSOAS_R).getName() == "iliopsoas_r" and env.sim.weakened_muscles[1] == "iliopsoas_r"
    assert RunEnv(weakening="psoas").sim.weakened_muscles == ("iliopsoas_l", "iliopsoas_r")
    with pytest.raises(ValueError, match="weakening"):
        RunEnv(weakening="gluteus")


@pytest.mark.parametrize("weakening", ["graders-2017", "psoas"])
def test_difficulty_2_scales_the_max_isometric_force_of_the_setting_s_muscles(weakening):
    env = RunEnv(difficulty=2, max_obstacles=0, weakening=weakening)
    muscles = env.sim.model.getMuscles()
    base = {muscles.get(i).getName(): muscles.get(i).getMaxIsometricForce() for i in range(muscles.getSize())}
    obs, _ = env.reset(seed=0, options={"layout": EpisodeLayout(np.zeros((0, 3)), (0.7, 0.8))})
    assert tuple(obs[36:38]) == (0.7, 0.8)  # observed as (left, right), as in 2017
    left, right = env.sim.weakened_muscles
    now = {muscles.get(i).getName(): muscles.get(i).getMaxIsometricForce() for i in range(muscles.getSize())}
    assert now[left] == pytest.approx(0.7 * base[left]) and now[right] == pytest.approx(0.8 * base[right])
    assert all(now[name] == base[name] for name in base if name not in (left, right))


def test_graders_physics_is_a_default_manager_built_every_step_as_in_2017():
    """The 2017 env made `opensim.Manager(model)` each step and set no integrator or accuracy: OpenSim's
    defaults. The graders-2017 preset gives the very same states; the stricter `accurate` does not."""
    excitations = np.clip(0.3 + 0.3 * np.sin(np.arange(18) + np.arange(30)[:, None] / 5.0), 0, 1)
    grader = GaitModel(0, resolve_physics("graders-2017"))
    ours = {name: GaitModel(0, PRESETS[name]) for name in ("graders-2017", "accurate")}
    for model in (grader, *ours.values()):
        model.reset_state()
    deviation = dict.fromkeys(ours, 0.0)
    managers = []  # integrate() returns the manager's own state: keep each manager alive while it is used
    for a in excitations:
        grader.set_excitations(a)
        manager = opensim.Manager(grader.model)  # as osim-rl 48494f5 osim.py: defaults, a new one per step
        managers.append(manager)
        manager.initialize(grader.state)
        grader.state = manager.integrate(grader.state.getTime() + STEPSIZE)
        for name, model in ours.items():
            model.set_excitations(a)
            model.integrate_step()
            diff = np.abs(model.state_variables() - grader.state_variables()).max()
            deviation[name] = max(deviation[name], diff)
    assert deviation["graders-2017"] == 0.0
    assert deviation["accurate"] > 1e-5
    assert resolve_physics("medium") == PRESETS["graders-2017"] and resolve_physics("reference") == PRESETS["accurate"]
    assert RunEnv().physics == PRESETS["graders-2017"]  # the task's own default


def test_round2_is_difficulty_2_with_10_obstacles_the_graders_physics_and_weakening():
    r2 = SETTINGS["round2"]
    assert (r2.difficulty, r2.obstacles, r2.physics, r2.weakening) == (2, 10, "graders-2017", "graders-2017")
    assert setting_name(2, 10, "medium", "graders-2017") == "round2"  # the earlier name of the same physics
    assert setting_name(2, 10, "accurate", "graders-2017") == ""
    assert setting_name(2, 10, "graders-2017", "psoas") == ""
    assert setting_name(2, 3, "graders-2017", "graders-2017") == ""
    assert setting_name(0, 10, "graders-2017", "psoas") == "flat"
    env = RunEnv(difficulty=r2.difficulty, max_obstacles=r2.obstacles, physics=r2.physics, weakening=r2.weakening)
    env.reset(seed=1)
    assert len(env.layout.obstacles) == 10
    steps = 0
    truncated = terminated = False
    while not (terminated or truncated):  # a zero action falls long before the limit; check the count anyway
        _, _, terminated, truncated, _ = env.step(np.zeros(18))
        steps += 1
    assert steps <= TIMESTEP_LIMIT and (terminated or steps == TIMESTEP_LIMIT)


def test_eval_setting_round2_names_it_and_quotes_2017_only_beside_it(tmp_path):
    model = ROOT / "models" / "walk" / "checkpoint.pt"
    out = tmp_path / "r2"
    result = run([LRUN, "eval", str(model), "--setting", "round2", "--episodes", "1", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    settings = json.loads((out / "eval.json").read_text())["settings"]
    assert settings["setting"] == "round2" and settings["physics"] == "graders-2017" and settings["obstacles"] == 10
    assert "setting round2" in result.stdout and "2017 round 2" in result.stdout
    # the walker meets obstacles it never saw: said before the episodes run
    assert "note: this policy was trained on lrun/Run-v0: difficulty 0, no obstacles" in result.stdout
    # where it fell, from the obstacles and strengths the store holds for each episode
    falls = json.loads((out / "eval.json").read_text())["falls"]
    assert falls["episodes"] == 1 and falls["obstacles"] == 10 and "by_strength" in falls
    assert (out / "falls.png").stat().st_size > 5000 and "falls by the weaker muscle strength" in result.stdout
    report = run([LRUN, "report", str(out)])  # an evaluation's report: its summary and where it fell
    assert report.returncode == 0, report.stderr
    assert "setting round2" in report.stdout and "falls by the weaker muscle strength" in report.stdout
    assert (out / "report" / "falls.png").is_file()
    replayed = replay_episode(out, 0)  # the store says which muscles were weakened: the replay is exact
    assert replayed["max_obs_deviation"] == 0.0 and replayed["replayed_steps"] == replayed["stored_steps"]
    result = run([LRUN, "eval", str(model), "--setting", "round2", "--physics", "fast", "--out", str(tmp_path / "x")])
    assert result.returncode == 2 and "--setting round2 runs --physics graders-2017, not fast" in result.stderr
    assert not (tmp_path / "x").exists()
    # a flat-ground evaluation prints no 2017 figures: tests/test_models.py's `make demo` (difficulty 0)


def test_a_setting_s_flags_may_repeat_it_or_name_it_another_way_but_not_contradict_it():
    from lrun.cli import build_parser, eval_settings
    from lrun.config import ConfigError

    def settings(*flags: str):
        return eval_settings(build_parser().parse_args(["eval", "model.pt", *flags]))

    # the earlier name of the graders' physics, and a weakening that does not matter on flat ground, are fine
    flat = settings("--setting", "flat", "--physics", "medium", "--weakening", "psoas")
    assert flat.setting == "flat" and (flat.difficulty, flat.physics) == (0, "medium")
    assert settings("--setting", "round2", "--difficulty", "2").setting == "round2"
    assert settings("--difficulty", "2", "--obstacles", "10").setting == "round2"  # what the flags default to
    assert settings("--setting", "round2", "--physics", "medium").setting == "round2"
    for flags in (("--physics", "fast"), ("--weakening", "psoas"), ("--obstacles", "3"), ("--difficulty", "1")):
        with pytest.raises(ConfigError, match="drop one of them"):
            settings("--setting", "round2", *flags)
