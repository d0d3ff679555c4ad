"""`lrun compare`: runs grouped by recipe, seeds aggregated by interquartile mean with a bootstrap CI; evaluations
paired episode by episode."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from helpers import LRUN, run

from lrun.analysis.compare import CompareError, bootstrap_ci, compare, group_runs, interquartile_mean
from lrun.analysis.paired import mcnemar_exact, pair, read_evaluation
from lrun.config import TrainConfig


def fake_run(path, seed: int, lr: float, level: float, steps: int = 10) -> None:
    """A run directory as lrun writes it: config.json (with metadata) and progress.csv."""
    config = TrainConfig().to_dict()
    config["run"].update(seed=seed, run_dir=str(path))
    config["ppo"]["learning_rate"] = lr
    config["metadata"] = {"hosts": [f"node{seed}"]}
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    with open(path / "progress.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["iteration", "env_steps", "charts/episodic_task_return", "charts/distance", "charts/fall_rate"]
        )
        for i in range(1, steps + 1):
            value = level * i / steps
            writer.writerow([i, 1000 * i, value, value, "" if i == 3 else 1.0 - i / steps])


def test_iqm_trims_a_quarter_from_each_end_and_the_ci_covers_it():
    values = np.array([[0.0], [1.0], [2.0], [3.0], [100.0], [4.0], [5.0], [6.0]])
    assert interquartile_mean(values)[0] == pytest.approx(np.mean([2.0, 3.0, 4.0, 5.0]))
    assert interquartile_mean(np.array([[1.0], [2.0], [9.0]]))[0] == 4.0  # fewer than 4: the mean
    # a run without the value (NaN) is left out, not sorted in as the largest; none at all gives NaN
    with_gap = np.array([[2.0, np.nan], [15.0, np.nan], [14.0, 1.0], [np.nan, 3.0], [16.0, np.nan]])
    assert interquartile_mean(with_gap)[0] == pytest.approx(14.5) and interquartile_mean(with_gap)[1] == 2.0
    assert np.isnan(interquartile_mean(np.full((3, 1), np.nan))[0])
    low, high = bootstrap_ci(values)
    assert low[0] <= interquartile_mean(values)[0] <= high[0] and high[0] - low[0] > 0
    same = np.full((5, 3), 2.5)
    assert np.array_equal(bootstrap_ci(same)[0], same[0]) and np.array_equal(bootstrap_ci(same)[1], same[0])


def test_runs_are_grouped_by_recipe_and_seeds_aggregated(tmp_path):
    for seed, level in ((0, 1.0), (1, 2.0), (2, 3.0)):
        fake_run(tmp_path / "array" / f"walk-seed{seed}", seed, 3e-4, level)
    fake_run(tmp_path / "other", 0, 1e-4, 10.0)
    groups = group_runs([tmp_path / "array", tmp_path / "other"])
    assert [(g.label, len(g.curves)) for g in groups] == [("walk", 3), ("other", 1)]
    aggregates, text = compare([tmp_path / "array", tmp_path / "other"], tmp_path / "out")
    walk = aggregates[0]
    assert walk.grid[0] == 1000 and walk.grid[-1] == 10000
    # the last points (smoothed over 5 iterations): seeds at 0.8, 1.6, 2.4 -> IQM of three is their mean
    assert walk.iqm["distance"][-1] == pytest.approx(np.mean([0.8, 1.6, 2.4]))
    assert walk.low["distance"][-1] < walk.iqm["distance"][-1] < walk.high["distance"][-1]
    assert np.isfinite(walk.iqm["fall_rate"]).all()  # an iteration without the value is skipped, not NaN
    assert "walk" in text and "other" in text
    for name in ("compare.txt", "compare.csv", "compare.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    with open(tmp_path / "out" / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["group"] for r in rows} == {"walk", "other"} and {r["metric"] for r in rows} >= {"distance"}


def test_a_benchmark_s_seed_directories_take_the_benchmark_s_name(tmp_path):
    """`lrun bench learn` leaves OUT/seed-0, OUT/seed-1: two benchmarks of two recipes are told apart by OUT."""
    from lrun.analysis.compare import run_label

    for out, lr in (("learn-sync", 3e-4), ("learn-overlap", 1e-4)):
        for seed in (0, 1):
            fake_run(tmp_path / out / f"seed-{seed}", seed, lr, 1.0 + seed)
    groups = group_runs([tmp_path / "learn-sync", tmp_path / "learn-overlap"])
    assert [(g.label, len(g.curves)) for g in groups] == [("learn-sync", 2), ("learn-overlap", 2)]
    assert run_label(tmp_path / "walk-seed-3", 3) == "walk" and run_label(tmp_path / "seed3", 4) == "seed3"


def test_compare_command_and_its_errors(tmp_path):
    fake_run(tmp_path / "a", 0, 3e-4, 1.0)
    ok = run([LRUN, "compare", str(tmp_path / "a"), "--out", str(tmp_path / "out")])
    assert ok.returncode == 0, ok.stderr
    assert "IQM" in ok.stdout and (tmp_path / "out" / "compare.png").is_file()
    (tmp_path / "empty").mkdir()
    bad = run([LRUN, "compare", str(tmp_path / "empty")])
    assert bad.returncode == 2 and "no run directories" in bad.stderr and "Traceback" not in bad.stderr
    with pytest.raises(CompareError, match="no such run directory"):
        group_runs([tmp_path / "missing"])


def test_two_short_runs_compare_without_warnings_and_with_readable_step_labels(tmp_path):
    """Seeds whose metric is missing at a grid point (here no episode ended yet) leave NaN, said by no warning;
    the axis labels env steps at a scale they can be read at."""
    from lrun.analysis.compare import steps_label

    for seed in (0, 1):
        fake_run(tmp_path / f"s{seed}", seed, 3e-4, 1.0, steps=3)
        rows = (tmp_path / f"s{seed}" / "progress.csv").read_text().splitlines()
        # the first iteration logged no distance or fall rate (no episode had ended)
        rows[1] = ",".join(cell if k < 2 else "" for k, cell in enumerate(rows[1].split(",")))
        (tmp_path / f"s{seed}" / "progress.csv").write_text("\n".join(rows) + "\n")
    result = run([LRUN, "compare", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and result.stderr.strip() == ""
    assert [steps_label(x) for x in (1600, 1650, 25_000, 2_500_000)] == ["1600", "1650", "25 k", "2.5 M"]


def fake_evaluation(path, seeds, distances, fell, physics: str = "graders-2017", **task):
    """An evaluation directory as `lrun eval` writes it: eval.json (settings) and episodes.csv."""
    path.mkdir(parents=True)
    settings = {"difficulty": 2, "obstacles": 10, "physics": physics, "weakening": "graders-2017", "seed": 4242}
    settings.update(task)
    (path / "eval.json").write_text(json.dumps({"settings": {**settings, "setting": "round2"}}))
    with open(path / "episodes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["episode", "seed", "distance", "fell"])
        for k, (seed, distance, f) in enumerate(zip(seeds, distances, fell)):
            writer.writerow([k, seed, distance, int(f)])
    return path


def test_mcnemar_exact_p_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(1, 4) == pytest.approx(2 * (1 + 5) / 32)


def test_evaluations_are_paired_by_seed_not_by_row(tmp_path):
    """Each evaluation is compared with the first on the episode seeds both ran, whatever their order."""
    base = fake_evaluation(tmp_path / "a", [11, 12, 13, 14], [1.0, 2.0, 3.0, 4.0], [1, 1, 0, 0])
    # the same episodes in another order, 0.5 m further each, one fall fewer; and a seed the baseline lacks
    other = fake_evaluation(tmp_path / "b", [14, 99, 13, 12, 11], [4.5, 0.0, 3.5, 2.5, 1.5], [0, 1, 0, 0, 1])
    result = pair(read_evaluation(base), read_evaluation(other))
    assert result.pairs == 4
    assert result.difference == pytest.approx(0.5) and result.interval == pytest.approx((0.5, 0.5))
    assert result.distance == pytest.approx((2.5, 3.0))
    assert result.falls == (2, 1) and (result.only_baseline_fell, result.only_other_fell) == (1, 0)
    assert result.p_falls == 1.0
    out = tmp_path / "out"
    _, text = compare([base, other], out)
    assert "+0.50 m [+0.50, +0.50]" in text and "2 -> 1" in text
    assert (out / "compare.png").stat().st_size > 0
    with open(out / "compare.csv") as handle:
        assert float(next(csv.DictReader(handle))["difference"]) == 0.5


def test_evaluations_of_other_tasks_or_seeds_or_mixed_with_runs_are_refused_in_one_line(tmp_path):
    base = fake_evaluation(tmp_path / "a", [1, 2], [1.0, 2.0], [0, 0])
    fast = fake_evaluation(tmp_path / "fast", [1, 2], [1.0, 2.0], [0, 0], physics="fast")
    elsewhere = fake_evaluation(tmp_path / "seeds", [3, 4], [1.0, 2.0], [0, 0])
    fake_run(tmp_path / "run", seed=0, lr=3e-4, level=1.0)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "eval-plan.json").write_text("{}")
    for others, message in (
        ([fast], "another task (physics 'graders-2017' against 'fast')"),
        ([elsewhere], "share no episode seed"),
        ([tmp_path / "run"], f"{tmp_path / 'run'}: not an evaluation"),
        ([tmp_path / "typo"], "typo: no such directory"),
        ([unfinished], "an unfinished evaluation (finish it with lrun eval ... --resume"),
    ):
        with pytest.raises(CompareError, match=re.escape(message)):
            compare([base, *others], tmp_path / "out")
    # the same task by lrun's own reckoning: a physics alias; obstacles and weakening where they play no part
    alias = fake_evaluation(tmp_path / "alias", [1, 2], [1.5, 2.5], [0, 0], physics="medium")
    assert pair(read_evaluation(base), read_evaluation(alias)).difference == pytest.approx(0.5)
    flat = fake_evaluation(tmp_path / "flat", [1, 2], [1.0, 2.0], [0, 0], difficulty=0, obstacles=0)
    flat_3 = fake_evaluation(tmp_path / "flat3", [1, 2], [1.0, 2.0], [0, 0], difficulty=0, obstacles=3)
    assert pair(read_evaluation(flat), read_evaluation(flat_3)).pairs == 2
    # an evaluation from before lrun recorded the weakening: the same task below difficulty 2, refused at 2
    for name, difficulty in (("old-flat", 0), ("old-round2", 2)):
        old = fake_evaluation(tmp_path / name, [1, 2], [1.0, 2.0], [0, 0], difficulty=difficulty)
        written = json.loads((old / "eval.json").read_text())
        del written["settings"]["weakening"]
        (old / "eval.json").write_text(json.dumps(written))
    assert pair(read_evaluation(flat), read_evaluation(tmp_path / "old-flat")).pairs == 2
    with pytest.raises(CompareError, match="before lrun recorded which muscles it weakened: evaluate again"):
        read_evaluation(tmp_path / "old-round2")
    result = run([LRUN, "compare", str(base), str(fast), "--out", str(tmp_path / "cli")])
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "another task" in result.stderr


def test_any_logged_column_is_aggregated_on_request_and_a_misspelt_one_refused(tmp_path):
    for seed, alpha in ((0, 0.01), (1, 0.02), (2, 0.03)):
        path = tmp_path / "array" / f"walk-seed{seed}"
        fake_run(path, seed, 3e-4, 1.0)
        rows = (path / "progress.csv").read_text().splitlines()
        rows = [rows[0] + ",losses/alpha"] + [f"{r},{alpha}" for r in rows[1:]]
        (path / "progress.csv").write_text("\n".join(rows) + "\n")
    aggregates, text = compare([tmp_path / "array"], tmp_path / "out", ["losses/alpha", "charts/distance"])
    (walk,) = aggregates
    assert list(walk.iqm) == ["task_return", "distance", "fall_rate", "losses/alpha"]  # distance not twice
    assert walk.iqm["losses/alpha"][-1] == pytest.approx(0.02)
    assert walk.low["losses/alpha"][-1] < 0.02 < walk.high["losses/alpha"][-1]
    assert "losses/alpha IQM" in text
    with open(tmp_path / "out" / "compare.csv", newline="") as handle:
        assert "losses/alpha" in {r["metric"] for r in csv.DictReader(handle)}

    bad = run([LRUN, "compare", str(tmp_path / "array"), "--metric", "losses/alpah", "--out", str(tmp_path / "o2")])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "no run logged losses/alpah" in bad.stderr and "losses/alpha" in bad.stderr
    assert not (tmp_path / "o2").exists()  # refused before anything is written


def test_a_column_some_runs_lack_and_a_built_in_metric_asked_for_by_name(tmp_path):
    """Runs of an older lrun that did not log a column leave it out of the IQM; `--metric distance` adds no
    second distance panel; evaluations have no progress columns to pick."""
    for seed, alpha in ((0, 0.01), (1, 0.03), (2, None)):
        path = tmp_path / f"walk-seed{seed}"
        fake_run(path, seed, 3e-4, 1.0)
        if alpha is not None:
            rows = (path / "progress.csv").read_text().splitlines()
            rows = [rows[0] + ",losses/alpha"] + [f"{r},{alpha}" for r in rows[1:]]
            (path / "progress.csv").write_text("\n".join(rows) + "\n")
    runs = [tmp_path / f"walk-seed{seed}" for seed in range(3)]
    (walk,), _ = compare(runs, tmp_path / "out", ["distance", "losses/alpha"])
    assert list(walk.iqm) == ["task_return", "distance", "fall_rate", "losses/alpha"] and walk.runs == 3
    assert walk.iqm["losses/alpha"][-1] == pytest.approx(0.02)  # the two runs that logged it
    evaluations = [fake_evaluation(tmp_path / e, [1, 2], [1.0, 2.0], [0, 1]) for e in ("e1", "e2")]
    with pytest.raises(CompareError, match="columns of training runs; evaluations have none"):
        compare(evaluations, tmp_path / "o3", ["losses/alpha"])
