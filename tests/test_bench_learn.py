"""`lrun bench learn` end to end: a tiny budget trained and evaluated under mpiexec, the files it writes, refusal
of an existing benchmark, and a rerun that keeps the finished training and evaluations."""

from __future__ import annotations

import json
import math

import pytest
from helpers import BIN, EXPERIMENTS, MPIEXEC, run, sets

from lrun.bench_learn import iterations_for, make_plan

LRUN = str(BIN / "lrun")
RECIPE = str(EXPERIMENTS / "recipes" / "walk-footstep.toml")
# 1 simulator x 2 envs x 8 decisions x frame skip 4 = 64 simulated steps per iteration
TINY = sets(
    "layout.envs_per_rank=2", "ppo.steps_per_env=8", "ppo.minibatches=2", "ppo.epochs=2", "run.checkpoint_every=1"
)
# exactly 4 iterations' worth: episodes that end inside a frame skip leave the 4th short, so the run is continued
BUDGET = 256


def test_iterations_reach_the_budget_in_simulated_steps():
    plan = make_plan(RECIPE, 2_000_000, 3, 1, 20)  # 2 simulators x 8 envs x 64 decisions x frame skip 4
    assert (plan.simulators, plan.steps_per_iteration, plan.iterations) == (2, 4096, 489)
    assert make_plan(RECIPE, 4096, 1, 1, 20).iterations == 2  # serial mode: one simulator
    assert iterations_for(4097, 4096) == 2 and iterations_for(1, 4096) == 1


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_bench_learn_tiny_budget(tmp_path):
    out = tmp_path / "learn"
    command = [LRUN, "bench", "learn", RECIPE, "--env-steps", str(BUDGET), "--ranks", "2", "--eval-episodes", "2"]
    command += ["--out", str(out), *TINY]
    result = run([*command, "--json", str(tmp_path / "copy.json")])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "iter 4/4 | steps" in result.stderr  # the training's per-iteration lines come through
    for name in ("learn.json", "learn.txt", "learn.png"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "learn.json").read_text())
    assert report == json.loads((tmp_path / "copy.json").read_text())
    assert report["iterations"] == 4 and report["steps_per_iteration"] == 64 and report["ranks"] == 2
    (seed,) = report["seeds"]
    assert seed["env_steps"] >= BUDGET and seed["iterations"] >= 4 and seed["wall_s"] > 0 and seed["steps_per_s"] > 0
    for kind, episodes in (("reference", 2), ("training", 20)):
        summary = seed[f"eval_{kind}"]
        assert summary["episodes"] == episodes
        assert math.isfinite(summary["mean_distance_m"]) and math.isfinite(summary["median_distance_m"])
        assert 0 <= summary["fall_rate_ci95"][0] <= summary["fall_rate"] <= summary["fall_rate_ci95"][1] <= 1
        assert report["mean"][f"eval_{kind}"]["episodes"] == episodes
    assert report["evaluations"]["training"]["physics"] == "fast"
    assert report["evaluations"]["reference"] == {
        "episodes": 2,
        "difficulty": 0,
        "physics": "reference",
        "deterministic": True,
    }
    table = (out / "learn.txt").read_text()
    assert table.strip() in result.stdout and str(out / "learn.png") in result.stdout

    again = run(command)
    assert again.returncode == 2, again.stderr
    assert again.stderr.strip().count("\n") == 0 and "--overwrite" in again.stderr

    # with --overwrite: the finished run and both evaluations are kept, not redone
    rerun = run([*command, "--overwrite"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "running:" not in rerun.stderr and rerun.stderr.count(": kept") == 3
    assert json.loads((out / "learn.json").read_text())["seeds"][0]["eval_reference"] == seed["eval_reference"]

    # another config in the same directory is refused, not mixed in
    other = run([*command, "--overwrite", "--set", "ppo.learning_rate=1e-3"])
    assert other.returncode == 2 and "ppo.learning_rate" in other.stderr, other.stderr


def test_a_key_added_since_a_run_was_stored_is_no_difference_at_its_default():
    from lrun.bench_learn import _differences
    from lrun.config import TrainConfig

    ours = TrainConfig().to_dict()
    theirs = {section: dict(values) if isinstance(values, dict) else values for section, values in ours.items()}
    del theirs["sac"]["save_buffer"]  # a run stored before lrun had the key
    assert _differences(theirs, ours) == []
    ours["sac"]["save_buffer"] = False
    assert _differences(theirs, ours) == ["sac.save_buffer"]
    theirs["sac"]["batch_size"] = 7
    assert _differences(theirs, ours) == ["sac.batch_size", "sac.save_buffer"]
