"""The curriculum's table and picture (lrun.analysis.curriculum_report) on run directories and evaluations written
by hand, and the states an evaluation directory can be in (what `lrun curriculum --eval` decides from). The real
path, a curriculum under mpiexec that evaluates its stages, is tested in test_curriculum.py."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from lrun.analysis.curriculum_report import (
    StageFacts,
    build_rows,
    cumulative_steps,
    format_table,
    training_window,
    write_curriculum_report,
)
from lrun.curriculum import stage_evaluations
from lrun.evaluate import PLAN_NAME, EvalSettings, evaluation_state, kept_settings


def write_progress(run_dir: Path, rows: list[tuple[int, float, float, float]]) -> Path:
    """progress.csv with (env_steps, episodes, distance, fall_rate) rows; an empty cell where an iteration had no
    episode, as lrun's logger leaves it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "progress.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["iteration", "env_steps", "charts/episodes", "charts/distance", "charts/fall_rate"])
        for i, (steps, episodes, distance, falls) in enumerate(rows, 1):
            w.writerow([i, steps, episodes, "" if episodes == 0 else distance, "" if episodes == 0 else falls])
    return run_dir


def write_eval(out: Path, mean: float, falls: int, episodes: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "episodes": episodes,
        "mean_distance_m": mean,
        "median_distance_m": mean + 1,
        "falls": falls,
        "fall_rate": falls / episodes,
        "fall_rate_ci95": [0.01, 0.3],
        "mean_speed_m_s": 1.0,
    }
    (out / "eval.json").write_text(json.dumps({"checkpoint": "x", "iteration": 1, "summary": summary}))
    return out


def facts(name: str, parent: str | None, steps: int, **kw) -> StageFacts:
    base = StageFacts(
        name=name,
        parent=parent,
        transfer="init" if parent else "-",
        provided=False,
        algorithm="sac",
        actor=[128, 128],
        critics=[128, 128],
        task="round2",
        iterations=10,
        planned=10,
        env_steps=steps,
    )
    return replace(base, **kw)


def test_env_steps_add_up_along_each_stage_s_line_of_parents_not_the_file_s_order():
    stages = [facts("walk", None, 100), facts("run", "walk", 50), facts("obstacles", "walk", 30)]
    spans = cumulative_steps(stages)
    # obstacles branches from walk: it is not charged for run's 50 steps
    assert spans == {"walk": (0, 100), "run": (100, 150), "obstacles": (100, 130)}


def test_the_training_window_weighs_iterations_by_their_episodes_and_skips_empty_ones(tmp_path):
    rows = [(i * 10, 4, 1.0, 1.0) for i in range(1, 19)]  # 18 early iterations: 1 m, all falls
    rows += [(190, 0, 0.0, 0.0), (200, 3, 10.0, 0.0), (210, 1, 2.0, 1.0)]  # last 10 % = last 3 of 21
    window = training_window(write_progress(tmp_path / "run", rows))
    assert window["iterations"] == 3 and window["episodes"] == 4
    assert window["distance_m"] == pytest.approx((3 * 10.0 + 1 * 2.0) / 4)
    assert window["fall_rate"] == pytest.approx(1 / 4)
    assert training_window(None) is None and training_window(tmp_path / "nothing") is None


def test_the_table_reports_each_stage_s_evaluations_budget_and_unfinished_stages(tmp_path):
    walk = facts(
        "walk",
        None,
        2_000_000,
        provided=True,
        planned=None,
        task="flat",
        evals={"flat": write_eval(tmp_path / "e" / "walk" / "flat", 17.6, 0, 4), "round2": tmp_path / "none"},
    )
    obstacles = facts(
        "obstacles",
        "walk",
        1_000_000,
        transfer="blend",
        actor=[256, 256],
        critics=[256, 256],
        iterations=5,
        run_dir=write_progress(tmp_path / "obstacles", [(500_000, 2, 4.0, 0.5), (1_000_000, 2, 6.0, 0.5)]),
        evals={"round2": write_eval(tmp_path / "e" / "obstacles" / "round2", 9.5, 1, 4)},
    )
    rows = build_rows([walk, obstacles])
    assert rows[0]["complete"] and not rows[1]["complete"]
    assert rows[1]["env_steps_in_all"] == 3_000_000
    assert set(rows[0]["evaluations"]) == {"flat"}  # the round-2 evaluation has not run: no eval.json
    table = format_table(rows, seed=4242).splitlines()
    assert table[2].startswith("| walk | SAC | trained elsewhere | 2x128; 2x128 | 2.00 M / 2.00 M | - |")
    assert "flat: mean 17.60 m (median 18.60), falls 0.0 % (0/4" in table[2] and table[2].endswith("| - |")
    assert "| run (blend)" not in table[3] and "| walk (blend) | 2x256; 2x256 |" in table[3]
    assert "1.00 M / 3.00 M (iteration 5 of 10: unfinished)" in table[3]
    assert "| 6.00 m, falls 50 % (2 episodes) | = round 2 | mean 9.50 m" in table[3]  # last 10 %: 1 of 2
    assert "episode seed 4242" in table[-1]
    written = write_curriculum_report([walk, obstacles], tmp_path / "root", seed=4242)
    assert [p.name for p in written] == ["curriculum.md", "curriculum.json", "curriculum.png"]
    assert all(p.stat().st_size > 0 for p in written)
    data = json.loads(written[1].read_text())
    assert data["stages"][1]["training"]["episodes"] == 2 and data["eval_seed"] == 4242


def test_a_stage_is_scored_at_its_own_task_and_at_round_2_once_when_they_are_the_same():
    flat = stage_evaluations({"difficulty": 0, "max_obstacles": 3, "kwargs": {}}, 5, 7)
    assert list(flat) == ["flat", "round2"]
    assert (flat["flat"].difficulty, flat["flat"].obstacles, flat["flat"].physics) == (0, 0, "graders-2017")
    assert (flat["round2"].difficulty, flat["round2"].obstacles, flat["round2"].seed) == (2, 10, 7)
    round2 = stage_evaluations({"difficulty": 2, "max_obstacles": 10, "kwargs": {}}, 5, 7)
    assert list(round2) == ["round2"]
    other = stage_evaluations({"difficulty": 2, "max_obstacles": 3, "kwargs": {"weakening": "iliopsoas"}}, 5, 7)
    assert list(other) == ["d2-o3-iliopsoas", "round2"] and other["d2-o3-iliopsoas"].weakening == "iliopsoas"


def test_an_evaluation_directory_is_done_partial_another_policy_s_or_empty(tmp_path):
    checkpoint = tmp_path / "policy.pt"
    checkpoint.write_bytes(b"weights")
    settings = EvalSettings(episodes=10, seed=3)
    out = tmp_path / "out"
    assert evaluation_state(out, checkpoint, settings) == "none"
    out.mkdir()
    assert evaluation_state(out, checkpoint, settings) == "none"
    plan = {"sha256": hashlib.sha256(b"weights").hexdigest(), "settings": kept_settings(settings), "episodes": 10}
    (out / PLAN_NAME).write_text(json.dumps(plan))
    assert evaluation_state(out, checkpoint, settings) == "partial"  # started, no eval.json yet
    (out / "eval.json").write_text("{}")
    assert evaluation_state(out, checkpoint, settings) == "done"
    assert evaluation_state(out, checkpoint, replace(settings, episodes=20)) == "partial"  # to be extended
    assert evaluation_state(out, checkpoint, replace(settings, seed=4)) == "other"
    checkpoint.write_bytes(b"retrained")
    assert evaluation_state(out, checkpoint, settings) == "other"
    (out / PLAN_NAME).write_text("{not json")
    assert evaluation_state(out, checkpoint, settings) == "other"
