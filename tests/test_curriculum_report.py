"""The curriculum's table and picture (lrun.analysis.curriculum_report) on run directories and evaluations written
by hand, and the states an evaluation directory can be in (what `lrun curriculum --eval` decides from). The real
path, a curriculum under mpiexec that evaluates its stages, is tested in test_curriculum.py."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import signal
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import LRUN, MPIEXEC, ROOT, Started, run

from lrun.analysis.common import EVAL_PLAN_NAME
from lrun.analysis.curriculum_report import (
    StageFacts,
    build_rows,
    cumulative_steps,
    format_table,
    training_window,
    write_curriculum_report,
)
from lrun.curriculum import stage_evaluations
from lrun.evaluate import EvalSettings, EvaluationStopped, evaluate, evaluation_state, kept_settings


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


def write_eval(out: Path, mean: float, falls: int, episodes: int, iteration: int = 10) -> Path:
    """An eval.json as lrun eval writes it (the fields the table reads), of the policy of `iteration`."""
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
    (out / "eval.json").write_text(json.dumps({"checkpoint": "x", "iteration": iteration, "summary": summary}))
    return out


def facts(name: str, parent: str | None, steps: int, **kw) -> StageFacts:
    """A finished SAC stage of 10 iterations on round 2, with `kw` changed."""
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
        iterations=489,
        evals={"flat": write_eval(tmp_path / "e" / "walk" / "flat", 17.6, 0, 4, 489), "round2": tmp_path / "none"},
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
        evals={"round2": write_eval(tmp_path / "e" / "obstacles" / "round2", 9.5, 1, 4, 5)},
    )
    rows = build_rows([walk, obstacles])
    assert rows[0]["complete"] and not rows[1]["complete"]
    assert rows[1]["env_steps_in_all"] == 3_000_000
    assert set(rows[0]["evaluations"]) == {"flat"}  # the round-2 evaluation has not run: no eval.json
    table = format_table(rows, seed=4242).splitlines()
    assert table[2].startswith("| walk | SAC | trained elsewhere | 2x128; 2x128 | 2.00 M / 2.00 M | - |")
    assert "flat: mean 17.60 m (median 18.60), falls 0.0 % (0/4" in table[2] and table[2].endswith("| - |")
    assert "| walk (blend) | 2x256; 2x256 |" in table[3]
    assert "1.00 M / 3.00 M (iteration 5 of 10: unfinished)" in table[3]
    assert "| 6.00 m, falls 50 % (2 episodes) | = round 2 | mean 9.50 m" in table[3]  # last 10 %: 1 of 2
    assert "episode seed 4242" in table[-1]
    written = write_curriculum_report([walk, obstacles], tmp_path / "root", seed=4242)
    assert [p.name for p in written] == ["curriculum.md", "curriculum.json", "curriculum.png"]
    assert all(p.stat().st_size > 0 for p in written)
    data = json.loads(written[1].read_text())
    assert data["stages"][1]["training"]["episodes"] == 2 and data["eval_seed"] == 4242
    assert not list((tmp_path / "root").glob(".*tmp*"))  # written beside and renamed over

    # the stage trains on (iteration 7) without being evaluated again: its evaluation is marked as stale
    rows = build_rows([walk, replace(obstacles, iterations=7)])
    assert rows[1]["stale"] == ["round2"] and rows[0]["stale"] == []
    assert "1.00 m/s (STALE: iteration 5's policy) |" in format_table(rows).splitlines()[3]
    # no evaluation anywhere: no line about evaluation seeds
    bare = format_table(build_rows([replace(obstacles, evals={})]), seed=4242)
    assert "seed" not in bare and bare.splitlines()[2].endswith("| - | - |")


def test_a_stage_is_scored_at_its_own_task_and_at_round_2_once_when_they_are_the_same():
    flat = stage_evaluations({"difficulty": 0, "max_obstacles": 3, "kwargs": {}}, 5, 7)
    assert list(flat) == ["flat", "round2"]
    assert (flat["flat"].difficulty, flat["flat"].obstacles, flat["flat"].physics) == (0, 0, "graders-2017")
    assert (flat["round2"].difficulty, flat["round2"].obstacles, flat["round2"].seed) == (2, 10, 7)
    round2 = stage_evaluations({"difficulty": 2, "max_obstacles": 10, "kwargs": {}}, 5, 7)
    assert list(round2) == ["round2"]
    other = stage_evaluations({"difficulty": 2, "max_obstacles": 3, "kwargs": {"weakening": "iliopsoas"}}, 5, 7)
    assert list(other) == ["d2-o3-iliopsoas", "round2"] and other["d2-o3-iliopsoas"].weakening == "iliopsoas"
    # lrun eval scores Learning to Run policies only: a stage on another env gets none (and no failure)
    assert stage_evaluations({"id": "gymnasium:Hopper-v5", "difficulty": 0, "max_obstacles": 3}, 5, 7) == {}


def test_an_evaluation_directory_is_done_partial_another_policy_s_or_empty(tmp_path):
    checkpoint = tmp_path / "policy.pt"
    checkpoint.write_bytes(b"weights")
    settings = EvalSettings(episodes=10, seed=3)
    out = tmp_path / "out"
    assert evaluation_state(out, checkpoint, settings) == "none"
    out.mkdir()
    assert evaluation_state(out, checkpoint, settings) == "none"
    plan = {
        "sha256": hashlib.sha256(b"weights").hexdigest(),
        "settings": kept_settings(settings),
        "iteration": 4,
        "episodes": 10,
    }
    (out / EVAL_PLAN_NAME).write_text(json.dumps(plan))
    assert evaluation_state(out, checkpoint, settings) == "partial"  # started, no eval.json yet
    (out / "eval.json").write_text(json.dumps({"iteration": 4, "summary": {"episodes": 6}}))
    assert evaluation_state(out, checkpoint, settings) == "partial"  # a summary of fewer episodes than planned
    (out / "eval.json").write_text(json.dumps({"iteration": 4, "summary": {"episodes": 10}}))
    assert evaluation_state(out, checkpoint, settings) == "done"
    assert evaluation_state(out, checkpoint, replace(settings, episodes=20)) == "partial"  # to be extended
    assert evaluation_state(out, checkpoint, replace(settings, seed=4)) == "other"
    checkpoint.write_bytes(b"retrained")
    assert evaluation_state(out, checkpoint, settings) == "other"
    (out / EVAL_PLAN_NAME).write_text("{not json")
    assert evaluation_state(out, checkpoint, settings) == "other"


def test_a_stopped_evaluation_keeps_its_episodes_resumes_and_an_overwrite_leaves_no_old_summary(tmp_path):
    """Real OpenSim, one process: the `stop` callback ends an evaluation between episodes (EvaluationStopped, no
    summary), --resume runs only the rest, and an overwrite stopped at once leaves nothing that passes as done."""
    walker = ROOT / "models" / "walk" / "checkpoint.pt"
    out = tmp_path / "eval"
    settings = EvalSettings(episodes=2, seed=11, out=str(out))
    answers = iter([False, True])  # asked before each episode: run the first, stop before the second
    with pytest.raises(EvaluationStopped, match="stopped part way"):
        evaluate(walker, settings, stream=io.StringIO(), stop=lambda: next(answers))
    assert not (out / "eval.json").exists()
    assert evaluation_state(out, walker, settings) == "partial"
    log = io.StringIO()
    result = evaluate(walker, replace(settings, resume=True), stream=log)
    assert "resumed: 1 episodes finished earlier, 1 to run" in log.getvalue()
    assert result["summary"]["episodes"] == 2 and evaluation_state(out, walker, settings) == "done"
    with pytest.raises(EvaluationStopped):
        evaluate(walker, replace(settings, overwrite=True), stream=io.StringIO(), stop=lambda: True)
    assert not (out / "eval.json").exists() and not (out / "episodes.csv").exists()
    assert evaluation_state(out, walker, settings) == "partial"


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_lrun_eval_stopped_by_a_signal_keeps_its_episodes_and_exits_3(tmp_path):
    """`lrun eval` under mpiexec, SIGTERM part way (as a Slurm job's before its time limit): the running episodes
    finish, exit 3 with one line saying how to go on, no summary; --resume runs only the rest."""
    out = tmp_path / "eval"
    command = [MPIEXEC, "-n", "2", LRUN, "eval", str(ROOT / "models" / "walk"), "--setting", "flat"]
    command += ["--episodes", "6", "--seed", "3", "--out", str(out)]
    with Started(command) as started:
        started.read_until("  rank 0: 1/3 episodes")
        started.send_signal(signal.SIGTERM)
        stopped = started.finish(timeout=120)
    assert stopped.returncode == 3, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    (line,) = [x for x in stopped.stderr.splitlines() if x.startswith("lrun eval:")]
    assert "stopped by a signal" in line and "--resume" in line and "Traceback" not in stopped.stderr
    assert not (out / "eval.json").exists()
    resumed = run([*command, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    kept = int(re.search(r"resumed: (\d+) episodes finished earlier", resumed.stdout).group(1))
    assert 2 <= kept < 6  # at least rank 0's first and rank 1's first; not all
    assert json.loads((out / "eval.json").read_text())["summary"]["episodes"] == 6
