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
    for kind, episodes in (("deterministic", 1), ("sampled", 2)):
        summary = seed[f"eval_{kind}"]
        assert summary["episodes"] == episodes
        assert math.isfinite(summary["mean_distance_m"]) and math.isfinite(summary["median_distance_m"])
        assert 0 <= summary["fall_rate_ci95"][0] <= summary["fall_rate"] <= summary["fall_rate_ci95"][1] <= 1
        assert report["mean"][f"eval_{kind}"]["episodes"] == episodes
        # one seed: its interquartile mean is its distance, the bootstrap interval a point
        assert report["mean"][f"eval_{kind}"]["distance_iqm_m"] == pytest.approx(summary["mean_distance_m"])
        assert report["mean"][f"eval_{kind}"]["distance_iqm_ci95"] == pytest.approx([summary["mean_distance_m"]] * 2)
    assert report["evaluations"] == {
        "deterministic": {"episodes": 1, "difficulty": 0, "physics": "graders-2017", "deterministic": True},
        "sampled": {"episodes": 2, "difficulty": 0, "physics": "graders-2017", "deterministic": False},
    }
    for kind in ("deterministic", "sampled"):  # the evaluations ran with the settings the report names
        settings = json.loads((out / "seed-0" / f"eval-{kind}" / "eval.json").read_text())["settings"]
        assert settings["physics"] == "graders-2017" and settings["deterministic"] == (kind == "deterministic")
    table = (out / "learn.txt").read_text()
    assert table.strip() in result.stdout and str(out / "learn.png") in result.stdout

    again = run(command)
    assert again.returncode == 2, again.stderr
    assert again.stderr.strip().count("\n") == 0 and "--overwrite" in again.stderr

    # with --overwrite: the finished run and both evaluations are kept, not redone
    rerun = run([*command, "--overwrite"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "running:" not in rerun.stderr and rerun.stderr.count(": kept") == 3
    for kind in ("deterministic", "sampled"):
        assert json.loads((out / "learn.json").read_text())["seeds"][0][f"eval_{kind}"] == seed[f"eval_{kind}"]

    # more sampled episodes: only the sampled evaluation is made again
    more_command = [*command, "--overwrite"]
    more_command[more_command.index("--eval-episodes") + 1] = "3"
    more = run(more_command)
    assert more.returncode == 0, more.stderr[-3000:]
    assert more.stderr.count(": kept") == 2 and more.stderr.count("running:") == 1
    assert "evaluating (sampled)" in more.stderr, more.stderr[-3000:]
    again_seed = json.loads((out / "learn.json").read_text())["seeds"][0]
    assert again_seed["eval_sampled"]["episodes"] == 3
    assert again_seed["eval_deterministic"] == seed["eval_deterministic"]

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


def _summary(distance: float, falls: int, episodes: int = 100) -> dict:
    return {
        "episodes": episodes,
        "mean_distance_m": distance,
        "median_distance_m": distance,
        "falls": falls,
        "fall_rate": falls / episodes,
        "fall_rate_ci95": [0.0, 1.0],
        "integrator_failures": 0,
    }


def test_seeds_are_summarised_by_pooled_falls_and_the_interquartile_mean():
    from lrun.bench_learn import format_table, mean_summary

    seeds = [_summary(d, f) for d, f in ((2.0, 40), (15.0, 5), (14.0, 0), (16.0, 3))]
    mean = mean_summary(seeds)
    assert mean["mean_distance_m"] == pytest.approx(11.75)
    assert (mean["episodes"], mean["falls"], mean["fall_rate"]) == (400, 48, 0.12)
    assert mean["fall_rate_ci95"][0] < 0.12 < mean["fall_rate_ci95"][1]
    # 4 seeds: the best and the worst are trimmed, the failed seed does not drag the IQM down
    assert mean["distance_iqm_m"] == pytest.approx(14.5)
    low, high = mean["distance_iqm_ci95"]
    assert low < 14.5 < high
    # a seed without a distance is left out of the IQM rather than trimmed as if it were the best
    assert mean_summary([*seeds[1:], _summary(math.nan, 0)])["distance_iqm_m"] == pytest.approx(15.0)

    result = {
        "config": "walk.toml",
        "overrides": [],
        "env_steps_budget": 1000,
        "iterations": 4,
        "steps_per_iteration": 256,
        "ranks": 3,
        "simulators": 2,
        "evaluations": {
            "deterministic": {"episodes": 1},
            "sampled": {"episodes": 100, "difficulty": 0, "physics": "graders-2017"},
        },
        "seeds": [
            {
                "seed": s,
                "env_steps": 1024,
                "wall_s": 10.0,
                "steps_per_s": 102.4,
                "eval_deterministic": d,
                "eval_sampled": d,
            }
            for s, d in enumerate(seeds)
        ],
        "mean": {
            "env_steps": 1024,
            "wall_s": 10.0,
            "steps_per_s": 102.4,
            "eval_deterministic": mean,
            "eval_sampled": mean,
        },
    }
    lines = format_table(result).splitlines()
    assert len(lines) == 4 + 4 + 2 and lines[-2].split()[0] == "mean"
    assert "interquartile mean over 4 seeds" in lines[-1] and "sampled 14.50 m [" in lines[-1]
    assert lines[6].split()[5:7] == ["14.00", "0"]  # seed 2's deterministic distance and falls
    # below 4 seeds the table says that the IQM is the mean
    three = {**result, "seeds": result["seeds"][:3]}
    assert "the IQM is the mean" in format_table(three).splitlines()[-1]
