"""Blending, cloning, `lrun eval` and the transfer study end to end: real OpenSim, real MPI, real HDF5 files."""

from __future__ import annotations

import csv
import json
import re
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import LRUN, MPIEXEC, Started, run, sets, signal_after

from lrun.api import load_policy
from lrun.checkpoint import load_checkpoint
from lrun.evaluate import episode_seed

TINY = [
    "--set",
    "env.physics=fast",
    "--set",
    "layout.envs_per_rank=2",
    "--set",
    "ppo.steps_per_env=32",
    "--set",
    "ppo.minibatches=4",
    "--set",
    "ppo.epochs=2",
]
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")


def progress(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "progress.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A trained (briefly) 1x16 policy with its stored trajectories."""
    run_dir = tmp_path_factory.mktemp("transfer") / "source"
    result = run(
        [
            LRUN,
            "train",
            *TINY,
            "--set",
            "policy.hidden_sizes=[16]",
            "--set",
            "run.iterations=3",
            "--set",
            f"run.run_dir={run_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr
    return run_dir


@needs_mpi
def test_blend_trains_under_mpi_resumes_and_never_touches_the_frozen_network(source, tmp_path):
    run_dir = tmp_path / "blend"
    common = [MPIEXEC, "-n", "3", LRUN, "blend", str(source), *TINY, "--ramp", "4"]
    common += ["--set", "policy.hidden_sizes=[32, 32]", "--set", f"run.run_dir={run_dir}"]
    result = run([*common, "--set", "run.iterations=2"])
    assert result.returncode == 0, result.stderr
    assert "blending: frozen mlp [16] tanh gaussian" in result.stdout and "new mlp [32, 32]" in result.stdout
    result = run([*common, "--set", "run.iterations=4", "--resume", str(run_dir)])
    assert result.returncode == 0, result.stderr
    rows = progress(run_dir)
    assert [float(r["blend/coefficient"]) for r in rows] == [0.0, 0.25, 0.5, 0.75]
    checkpoint = load_checkpoint(run_dir)
    spec = checkpoint["meta"]["policy_spec"]
    assert (
        spec["kind"] == "blend"
        and spec["frozen"]["hidden_sizes"] == [16]
        and spec["student"]["hidden_sizes"] == [32, 32]
    )
    assert float(checkpoint["policy"]["coefficient"]) == 0.75
    assert checkpoint["lineage"][-1]["how"] == "blend"
    trained = load_checkpoint(source)
    for name, tensor in trained["policy"].items():  # four iterations of PPO over MPI left the frozen weights alone
        torch.testing.assert_close(checkpoint["policy"][f"frozen.{name}"], tensor, rtol=0, atol=0)
    frozen_stats = torch.cat([checkpoint["policy"]["frozen_mean"], checkpoint["policy"]["frozen_var"]])
    n = len(checkpoint["policy"]["frozen_mean"])
    torch.testing.assert_close(frozen_stats, trained["normaliser"][: 2 * n].to(torch.float64), rtol=0, atol=0)
    # the run's own normaliser moved on, so the frozen inputs really are mapped
    assert not torch.equal(checkpoint["normaliser"], trained["normaliser"])


def test_blend_at_coefficient_zero_acts_like_the_frozen_policy_in_eval(source, tmp_path):
    """A whole blend run at c = 0 (its normaliser moving on), then `lrun eval`: every stored action is the one the
    source policy takes on that observation with its own statistics."""
    run_dir = tmp_path / "zero"
    result = run(
        [
            LRUN,
            "blend",
            str(source),
            *TINY,
            "--set",
            "blend.end=0",
            "--set",
            "policy.hidden_sizes=[32]",
            "--set",
            "run.iterations=2",
            "--set",
            f"run.run_dir={run_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "eval"
    result = run([LRUN, "eval", str(run_dir), "--episodes", "3", "--physics", "fast", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    with h5py.File(out / "trajectories" / "rank-0000.h5", "r") as f:
        obs, applied = f["steps/obs"][:], f["steps/excitations"][:]
    assert len(obs) > 100
    policy, normaliser, _ = load_policy(source)
    raw, _, _ = policy.act(normaliser.normalise(obs), deterministic=True)
    expected = policy.env_action(raw, np.zeros(18), np.ones(18))
    np.testing.assert_allclose(applied, expected, rtol=0, atol=1e-6)


def read_table(out: Path) -> list[dict[str, str]]:
    with open(out / "episodes.csv") as handle:
        return list(csv.DictReader(handle))


def test_clone_imitates_the_stored_states_then_trains(source, tmp_path):
    run_dir = tmp_path / "clone"
    result = run(
        [
            LRUN,
            "clone",
            str(source),
            *TINY,
            "--set",
            "policy.hidden_sizes=[32, 32]",
            "--set",
            "clone.epochs=10",
            "--set",
            "clone.minibatch_size=32",
            "--set",
            "run.iterations=1",
            "--set",
            f"run.run_dir={run_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "cloning on 192 stored states" in result.stdout  # all of the source: 3 iterations x 2 envs x 32 steps
    with open(run_dir / "clone.csv") as handle:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)]
    assert [r["epoch"] for r in rows] == list(range(11))
    assert rows[-1]["holdout_kl"] < 0.5 * rows[0]["holdout_kl"], rows
    assert rows[-1]["train_kl"] < 0.5 * rows[0]["train_kl"], rows
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["lineage"][-1]["how"] == "clone" and checkpoint["meta"]["policy_spec"]["kind"] == "mlp"
    # PPO continued from the teacher's observation statistics: one more iteration (2 envs x 32 steps) on top
    # (per feature: [mean, var, count] x features; the largest count is that of any feature that varied)
    counts = [load_checkpoint(p)["normaliser"].view(3, -1)[2].max() for p in (run_dir, source)]
    assert counts[0] == counts[1] + 2 * 32


@needs_mpi
def test_eval_gives_the_same_episodes_on_one_and_three_ranks(source, tmp_path):
    outs = {}
    for ranks in (1, 3):
        out = tmp_path / f"eval-{ranks}"
        result = run(
            [
                MPIEXEC,
                "-n",
                str(ranks),
                LRUN,
                "eval",
                str(source),
                "--episodes",
                "5",
                "--difficulty",
                "2",
                "--obstacles",
                "10",
                "--physics",
                "fast",
                "--seed",
                "7",
                "--out",
                str(out),
            ]
        )
        assert result.returncode == 0, result.stderr
        assert "falls" in result.stdout and "95 % CI" in result.stdout and "2017" in result.stdout
        outs[ranks] = out
    assert (outs[1] / "episodes.csv").read_text() == (outs[3] / "episodes.csv").read_text()
    table = read_table(outs[3])
    assert [int(r["episode"]) for r in table] == list(range(5))
    assert [int(r["seed"]) for r in table] == [episode_seed(7, k) for k in range(5)]
    summary = json.loads((outs[3] / "eval.json").read_text())["summary"]
    distances = [float(r["distance"]) for r in table]
    assert summary["mean_distance_m"] == pytest.approx(np.mean(distances))
    assert summary["falls"] == sum(int(r["fell"]) for r in table)
    low, high = summary["fall_rate_ci95"]
    assert low <= summary["fall_rate"] <= high
    # the episodes are in the HDF5 store, with the requested obstacles, and replay exactly
    ids = []
    for path in sorted((outs[3] / "trajectories").glob("rank-*.h5")):
        with h5py.File(path, "r") as f:
            ids += list(f["episodes/id"][:])
            assert set(f["episodes/difficulty"][:]) <= {2}
            assert (f["episodes/n_obstacles"][:] == 10).all()
    assert sorted(ids) == list(range(5))
    result = run([LRUN, "replay", str(outs[3]), "--episode", "4"])
    assert result.returncode == 0 and "max observation deviation 0," in result.stdout, result.stdout + result.stderr
    result = run([LRUN, "report", str(outs[3])])
    assert result.returncode == 0, result.stderr
    result = run([LRUN, "render", str(outs[3]), "--episode", "2", "-o", str(tmp_path / "e.png")])
    assert result.returncode == 0 and (tmp_path / "e.png").stat().st_size > 0


@needs_mpi
def test_an_evaluation_killed_part_way_resumes_on_other_ranks_to_the_same_table(source, tmp_path):
    """kill -9 mid-evaluation loses only the running episode; --resume (2 ranks) keeps what was done, runs the
    rest, and writes exactly the table of an uninterrupted evaluation; a resume may raise --episodes."""
    task = ["--difficulty", "2", "--obstacles", "10", "--physics", "fast", "--seed", "5"]
    reference = tmp_path / "reference"
    result = run([LRUN, "eval", str(source), *task, "--episodes", "10", "--out", str(reference)])
    assert result.returncode == 0, result.stderr
    out = tmp_path / "resumed"
    with Started([LRUN, "eval", str(source), *task, "--episodes", "8", "--out", str(out)]) as first:
        first.read_until("  rank 0: 3/8 episodes")
        first.process.kill()  # kill -9
        first.process.wait()
    assert not (out / "eval.json").exists() and (out / "eval-plan.json").exists()
    # nothing is lost by a careless re-run, and a resume cannot mix settings or policies
    seed_6 = [*task[:-1], "6"]
    for options, message in (
        ([*task, "--episodes", "8"], "holds an unfinished evaluation: continue it with --resume"),
        ([*seed_6, "--episodes", "8", "--resume"], "seed 5 (now 6): a resume keeps the settings"),
        ([*task, "--episodes", "4", "--resume"], "may raise it, not lower it"),
        ([*task, "--episodes", "8", "--resume", "--overwrite"], "drop one of them"),
    ):
        result = run([LRUN, "eval", str(source), *options, "--out", str(out)])
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    result = run([LRUN, "eval", str(source), *task, "--episodes", "8", "--resume", "--out", str(tmp_path / "none")])
    assert result.returncode == 2 and "holds no evaluation to continue" in result.stderr
    result = run(
        [MPIEXEC, "-n", "2", LRUN, "eval", str(source), *task, "--resume", "--out", str(out)]  # its own 8 episodes
    )
    assert result.returncode == 0, result.stderr
    kept = int(re.search(r"resumed: (\d+) episodes finished earlier", result.stdout).group(1))
    assert 3 <= kept < 8
    reference_rows = (reference / "episodes.csv").read_text().splitlines()
    assert (out / "episodes.csv").read_text().splitlines() == reference_rows[:9]
    # extended to 10 episodes: the next two seeds run, the table is again the uninterrupted one
    result = run([LRUN, "eval", str(source), *task, "--episodes", "10", "--resume", "--out", str(out)])
    assert result.returncode == 0 and "8 episodes finished earlier, 2 to run" in result.stdout, result.stderr
    assert (out / "episodes.csv").read_text().splitlines() == reference_rows
    assert (out / "episodes-n8.csv").read_text().splitlines() == reference_rows[:9]  # the 8-episode result kept
    assert json.loads((out / "eval-n8.json").read_text())["summary"]["episodes"] == 8
    # the store holds each episode once and whole (the killed episode's steps, if any were written, are gone)
    ids, steps = [], 0
    for path in sorted((out / "trajectories").glob("rank-*.h5")):
        with h5py.File(path, "r") as f:
            ids += list(f["episodes/id"][:])
            steps += f["steps/reward"].shape[0]
            assert f["episodes/end_step"][-1:] + 1 == f["steps/reward"].shape[0]
    assert sorted(ids) == list(range(10))
    assert steps == sum(int(row["length"]) for row in read_table(out))
    # paired episode by episode, the resumed evaluation and the uninterrupted one are the same policy's
    result = run([LRUN, "compare", str(reference), str(out), "--out", str(tmp_path / "compare")])
    assert result.returncode == 0, result.stderr
    assert "| 10 | " in result.stdout and "+0.00 m [+0.00, +0.00]" in result.stdout and "| 0 / 0 | 1" in result.stdout


@needs_mpi
def test_ctrl_c_ends_an_evaluation_in_one_line_that_says_how_to_finish_it(source, tmp_path):
    """Ctrl-C under mpiexec (forwarded to every rank) ends `lrun eval` after each rank's running episode, with
    exit 3 and one line from rank 0, not a traceback per rank, and the finished episodes are kept for --resume."""
    task = ["--difficulty", "2", "--obstacles", "10", "--physics", "fast", "--seed", "5", "--episodes", "20"]
    out = tmp_path / "eval"
    command = [MPIEXEC, "-n", "2", LRUN, "eval", str(source), *task, "--out", str(out)]
    first = signal_after(command, "  rank 0: 2/10 episodes", signal.SIGINT, timeout=60)
    stderr = first.stderr
    assert first.returncode == 3, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("lrun eval:")]
    assert lines == [
        "lrun eval: stopped by a signal after the running episodes; they are kept: the same command with --resume "
        "(in place of any --overwrite) runs the rest"
    ], stderr
    result = run([LRUN, "eval", str(source), *task, "--resume", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert int(re.search(r"resumed: (\d+) episodes finished earlier", result.stdout).group(1)) >= 2


def test_a_resumed_evaluation_reads_back_each_row_exactly_at_frame_skip_4(tmp_path):
    """The walker (frame skip 4) falls at round 2, often part way through a skip: the simulated time stored for
    each episode is the env's own step count, so rows read back from the store equal the rows as run."""
    from lrun.evaluate import stored_rows

    out = tmp_path / "walk"
    command = [LRUN, "eval", "walk", "--episodes", "3", "--physics", "fast", "--seed", "4", "--out", str(out)]
    result = run(command)
    assert result.returncode == 0, result.stderr
    table = read_table(out)
    steps = [round(float(r["sim_time_s"]) * 100) for r in table]
    assert any(s % 4 for s in steps), f"no episode ended part way through a skip: {steps}"  # the case at stake
    rows = stored_rows(out, 3, 4)
    for row, stored in zip(table, rows, strict=True):
        assert [float(row[name]) for name in row] == list(stored)


def test_transfer_inputs_that_cannot_work_fail_with_one_line(source, tmp_path):
    result = run([LRUN, "blend", str(source), *TINY, "--set", "policy.distribution=beta"])
    assert result.returncode == 2 and "policy.distribution is 'beta'; a blend needs them to match" in result.stderr
    result = run([LRUN, "train", "--set", f"run.init_from={source}", "--set", f"blend.source={source}"])
    assert result.returncode == 2 and "set at most one" in result.stderr
    unfinished = tmp_path / "unfinished"
    result = run(
        [
            LRUN,
            "blend",
            str(source),
            *TINY,
            "--ramp",
            "10",
            "--set",
            "run.iterations=1",
            "--set",
            f"run.run_dir={unfinished}",
        ]
    )
    assert result.returncode == 0, result.stderr
    result = run(
        [LRUN, "train", *TINY, "--set", f"run.init_from={unfinished}", "--set", f"run.run_dir={tmp_path / 'x'}"]
    )
    assert result.returncode == 2 and "coefficient has not reached 1" in result.stderr
    out = tmp_path / "eval"
    assert run([LRUN, "eval", str(source), "--episodes", "1", "--physics", "fast", "--out", str(out)]).returncode == 0
    result = run([LRUN, "eval", str(source), "--episodes", "1", "--out", str(out)])
    assert result.returncode == 2 and "already holds an evaluation" in result.stderr
    result = run([LRUN, "eval", str(tmp_path / "nothing"), "--episodes", "1"])
    assert result.returncode == 2 and "no checkpoint at" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@needs_mpi
def test_transfer_study_compares_blending_cloning_and_scratch_on_one_budget(source, tmp_path):
    out = tmp_path / "study"
    study = [MPIEXEC, "-n", "3", LRUN, "transfer-study", str(source), "--out", str(out), *TINY]
    study += sets("policy.hidden_sizes=[32, 32]", "run.iterations=2")
    result = run([*study, *sets("blend.ramp_iterations=1", "clone.epochs=3"), "--eval-episodes", "2"], timeout=600)
    assert result.returncode == 0, result.stderr
    comparison = json.loads((out / "comparison.json").read_text())["methods"]
    assert set(comparison) == {"blend", "clone", "scratch"}
    assert len({m["env_steps"] for m in comparison.values()}) == 1  # the same env-step budget
    assert all("eval" in m for m in comparison.values())
    text = (out / "comparison.txt").read_text()
    assert all(name in text for name in ("blend", "clone", "scratch"))
    assert (out / "comparison.png").stat().st_size > 10_000
    again = run([*study, "--methods", "blend"])  # re-running skips finished methods
    assert again.returncode == 0 and "== blend: done" in again.stdout, again.stderr


def test_clone_needs_a_store_that_fits(source, tmp_path):
    result = run([LRUN, "clone", str(source), *TINY, "--store", str(tmp_path / "nowhere")])
    assert result.returncode == 2 and "no such run directory" in result.stderr
    assert result.stderr.startswith("lrun clone: error: ")  # the command typed, not the lrun train it runs
    pendulum = tmp_path / "pendulum"
    pendulum_run = sets("env.id=gymnasium:Pendulum-v1", "run.iterations=1", "ppo.steps_per_env=16")
    assert run([LRUN, "train", *pendulum_run, *sets("ppo.minibatches=2", f"run.run_dir={pendulum}")]).returncode == 0
    result = run([LRUN, "clone", str(source), *TINY, "--store", str(pendulum), *sets(f"run.run_dir={tmp_path / 'c'}")])
    assert result.returncode == 2 and "stored observations have [3] values, this env 41" in result.stderr
