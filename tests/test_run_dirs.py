"""Starting a run never mixes or overwrites another: `--resume` continues a run in place, a directory holding lrun
data without a checkpoint is refused, `--resume` past the end changes nothing, and bad run directories get one
line. Every refusal is checked with checksums of every file before and after."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import EXPERIMENTS, LRUN, checksums, run, sets

from lrun.checkpoint import load_checkpoint

TINY = sets(
    "env.physics=fast",
    "layout.envs_per_rank=1",
    "ppo.steps_per_env=8",
    "ppo.minibatches=2",
    "ppo.epochs=1",
    "policy.hidden_sizes=[8]",
    "run.checkpoint_every=1",
)


def train(*args: str):
    return run([LRUN, "train", str(EXPERIMENTS / "tiny.toml"), *TINY, *args], timeout=120)


def one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_resume_continues_in_place_and_refuses_to_mix_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(*sets("run.iterations=2", f"run.run_dir={a}")).returncode == 0
    assert train(*sets("run.iterations=1", f"run.run_dir={b}")).returncode == 0
    before = checksums(tmp_path)

    # another run's directory as the target of a resume: refused, nothing touched
    one_line_error(train("--resume", str(a), *sets("run.iterations=3", f"run.run_dir={b}")), "continues the run in")
    # past the configured iterations: nothing to do, nothing touched (master.h5 included)
    done = train("--resume", str(a), *sets("run.iterations=2"))
    assert done.returncode == 0 and "nothing to do" in done.stdout, done.stderr
    assert checksums(tmp_path) == before

    # the README's example: the config's own run_dir (runs/tiny) is not where the resumed run lives
    result = run(
        [LRUN, "train", str(EXPERIMENTS / "tiny.toml"), *TINY, *sets("run.iterations=3"), "--resume", str(a)],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(a)["iteration"] == 3 and not (Path("runs") / "tiny" / "checkpoints").exists()
    assert checksums(b) == {k[2:]: v for k, v in before.items() if k.startswith("b/")}


def test_a_directory_with_lrun_data_but_no_checkpoint_is_refused(tmp_path):
    killed = tmp_path / "killed"
    assert train(*sets("run.iterations=1", f"run.run_dir={killed}")).returncode == 0
    shutil.rmtree(killed / "checkpoints")  # as if killed before its first checkpoint
    before = checksums(tmp_path)
    one_line_error(train(*sets("run.iterations=1", f"run.run_dir={killed}")), "holds lrun data", "rm -r")
    assert checksums(tmp_path) == before


def test_a_checkpoint_kept_outside_a_run_continues_in_a_new_directory(tmp_path):
    source = tmp_path / "source"
    assert train(*sets("run.iterations=1", f"run.run_dir={source}")).returncode == 0
    shipped = tmp_path / "models" / "walk"
    shipped.mkdir(parents=True)
    shutil.copy(source / "checkpoints" / "checkpoint.pt", shipped / "checkpoint.pt")
    before = checksums(tmp_path)
    one_line_error(train("--resume", str(shipped), *sets("run.iterations=2", f"run.run_dir={shipped}")), "new run")
    one_line_error(
        train("--resume", str(shipped), *sets("run.iterations=2", f"run.run_dir={source}")), "already holds a run"
    )
    assert checksums(tmp_path) == before
    fork = tmp_path / "fork"
    result = train("--resume", str(shipped), *sets("run.iterations=2", f"run.run_dir={fork}"))
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(fork)["iteration"] == 2
    assert checksums(shipped) == {k.removeprefix("models/walk/"): v for k, v in before.items() if "models/" in k}


def test_unusable_run_directories_get_one_line(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory\n")
    before = checksums(tmp_path)
    one_line_error(train(*sets(f"run.run_dir={a_file}")), "is a file, not a directory")
    one_line_error(train(*sets(f"run.run_dir={a_file / 'run'}")), "cannot be created", str(a_file))
    one_line_error(train(*sets("run.run_dir=")), "run.run_dir = '': must be a directory name")
    assert checksums(tmp_path) == before
