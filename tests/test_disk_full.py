"""A disk that fills up mid-run: one line naming the path and the problem, the last checkpoint intact, and the
run continues with --resume once there is space, its store cut back to that checkpoint. Uses a 1 MB tmpfs
(needs root to mount; skipped loudly otherwise)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import EXPERIMENTS, LRUN, MPIEXEC, run, sets

from lrun.checkpoint import load_checkpoint
from lrun.store.reader import RunStore

TINY = sets(
    "env.physics=fast",
    "layout.envs_per_rank=2",
    "ppo.steps_per_env=100",
    "ppo.minibatches=2",
    "ppo.epochs=1",
    "policy.hidden_sizes=[8]",
    "run.iterations=200",
    "run.checkpoint_every=2",
    "run.tensorboard=false",  # the store and the checkpoints are under test (TensorBoard's writer is a thread)
)


@contextmanager
def tmpfs(options: str) -> Iterator[Path]:
    """A 1 MB tmpfs mounted with `options` for the duration (skips the test where it cannot be mounted)."""
    mount = Path("/tmp") / f"lrun-tmpfs-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"{options},size=1M", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs ({options}; needs root): {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


@pytest.fixture
def small_disk() -> Iterator[Path]:
    with tmpfs("rw") as mount:
        yield mount


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_full_disk_ends_in_one_line_and_loses_nothing_up_to_the_checkpoint(small_disk, tmp_path, ranks):
    run_dir = small_disk / "run"
    launch = [LRUN] if ranks == 1 else [MPIEXEC, "-n", str(ranks), LRUN]
    if ranks > 1 and MPIEXEC is None:
        pytest.skip("no mpiexec")
    result = run([*launch, "train", str(EXPERIMENTS / "tiny.toml"), *TINY, *sets(f"run.run_dir={run_dir}")])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("lrun train: error")]
    assert len(ours) == 1 and str(small_disk) in ours[0] and "No space left on device" in ours[0], result.stderr
    if ranks == 1:
        assert result.stderr.strip() == ours[0]
    checkpoint = load_checkpoint(run_dir)  # whole and loadable
    done = int(checkpoint["iteration"])
    assert done >= 2

    # with space again (the run moved to a roomy disk), --resume continues and the store holds exactly the
    # steps of the checkpointed iterations, then the new ones
    roomy = tmp_path / "run"
    shutil.copytree(run_dir, roomy)
    again = run(
        [
            *launch,
            "train",
            str(EXPERIMENTS / "tiny.toml"),
            *TINY,
            *sets(f"run.iterations={done + 2}"),
            "--resume",
            str(roomy),
        ]
    )
    assert again.returncode == 0, again.stderr
    assert f"resuming at iteration {done}" in again.stdout
    with RunStore(roomy) as store:
        versions = store.steps(["policy_version"])["policy_version"]
    assert sorted(set(versions.tolist())) == list(range(done + 2))
    assert len(versions) == (done + 2) * 2 * 100 * max(ranks - 1, 1)


def test_a_read_only_file_system_is_refused_before_any_work():
    with tmpfs("ro") as mount:
        result = run([LRUN, "train", str(EXPERIMENTS / "tiny.toml"), *TINY, *sets(f"run.run_dir={mount / 'run'}")])
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert f"run.run_dir {mount / 'run'}: not writable ({mount} is not writable)" in result.stderr


def test_torch_s_words_for_a_short_write_become_a_full_disk():
    """torch's zip writer reports a disk that filled mid-checkpoint by its internals; lrun says what it means."""
    from lrun.checkpoint import write_failure

    torch_says = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5952 vs 5846")
    assert write_failure(torch_says) == "No space left on device: the disk (or your quota) is full"
    assert write_failure(OSError(28, "No space left on device")) == "No space left on device"
    assert write_failure(RuntimeError("something else\nmore")) == "something else"
