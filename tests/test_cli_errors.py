"""Every command has one error boundary: bad input ends within seconds in one line and exit 2, with no traceback
and no file changed (checksums); a bug in lrun says where its traceback went."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import EXPERIMENTS, LRUN, ROOT, checksums, clean_env, run, sets

from lrun.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny serial run with a checkpoint and stored episodes."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    tiny = sets(
        "env.physics=fast",
        "layout.envs_per_rank=2",
        "ppo.steps_per_env=80",
        "ppo.minibatches=2",
        "ppo.epochs=1",
        "policy.hidden_sizes=[8]",
        "run.iterations=2",
        f"run.run_dir={run_dir}",
    )
    result = run([LRUN, "train", *tiny])
    assert result.returncode == 0, result.stderr
    return run_dir


def bad_inputs(run_dir: Path, tmp: Path) -> list[tuple[list[str], str]]:
    checkpoint = run_dir / "checkpoints" / "checkpoint.pt"
    (tmp / "a-dir").mkdir(exist_ok=True)
    (tmp / "shots.gif").mkdir(exist_ok=True)
    (tmp / "notes.txt").write_text("not toml = = \n")
    hostile = tmp / "hostile.pt"
    with open(hostile, "wb") as f:
        pickle.dump({"format": "lrun", "x": Path("/")}, f)  # not tensors: needs weights_only=False to load
    torch.save({"format": "x", "x": Path("/")}, hostile)
    (tmp / "torn-eval").mkdir(exist_ok=True)
    (tmp / "torn-eval" / "eval.json").write_text('{"checkpoint": "runs/x", "summ')  # a copy cut off mid-write
    return [
        (["report", str(tmp / "torn-eval")], "eval.json is not an lrun evaluation's summary"),
        (["render", str(run_dir), "--episode", "0", "-o", str(tmp / "out.jpg")], "write FILE.gif"),
        (["render", str(run_dir), "--episode", "0", "-o", str(tmp / "s.png"), "--frames", "0"], "must be >= 1"),
        (["render", str(run_dir), "--episode", "0", "-o", str(tmp / "shots.gif")], "is a directory"),
        (["render", str(run_dir), "--episode", "0", "-o", str(tmp / "notes.txt" / "y.gif")], "notes.txt is a file"),
        (["report", str(checkpoint)], "is a file, not a run directory"),
        (["train", str(tmp / "a-dir")], "is a directory"),
        (["train", str(tmp / "notes.txt")], "not valid TOML"),
        (["eval", str(hostile)], "does not load"),
        (["eval", str(run_dir), "--episodes", "1", "--out", str(tmp / "notes.txt")], "is a file"),
        (["eval", str(run_dir), "--seed", "-1", "--out", str(tmp / "neg")], "--seed -1: must be >= 0"),
        (["replay", str(run_dir), "--episode", "999999"], "no finished episode"),
        (
            ["curriculum", str(EXPERIMENTS / "curriculum-tiny.toml"), "--root", str(tmp / "cur"), "--eval", "-1"],
            "--eval and --eval-seed must be >= 0",
        ),
        (
            ["curriculum", str(EXPERIMENTS / "curriculum-tiny.toml"), "--root", str(tmp / "absent"), "--report"],
            "no such directory: this curriculum has not run there",
        ),
    ]


def test_bad_inputs_get_one_line_and_change_nothing(trained, tmp_path):
    cases = bad_inputs(trained, tmp_path)
    before = checksums(trained)
    for args, message in cases:
        started = time.perf_counter()
        result = run([LRUN, *args], timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, (args, result.stderr)
        assert lines[0].startswith(f"lrun {args[0]}: error: ") and message in lines[0], (args, lines[0])
        assert "weights_only=False" not in result.stderr
        assert time.perf_counter() - started < 30
    assert checksums(trained) == before


def test_a_byte_order_mark_is_not_an_error(tmp_path):
    config = tmp_path / "bom.toml"
    config.write_bytes("\ufeff".encode() + (EXPERIMENTS / "tiny.toml").read_bytes())
    from lrun.config import load_config

    assert load_config(config).env.physics == "fast"


def test_a_bug_shows_where_its_traceback_is(monkeypatch, capsys):
    import lrun.analysis.report as report

    def broken(run_dir):
        raise ZeroDivisionError("deliberate")

    monkeypatch.setattr(report, "build_report", broken)
    monkeypatch.delenv("LRUN_DEBUG", raising=False)
    assert main(["report", "anything"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lrun report: internal error: ZeroDivisionError: deliberate") and "please report" in err
    log = Path(err.split("traceback is in ")[1].split(";")[0])
    assert "ZeroDivisionError" in log.read_text() and "Traceback" in log.read_text()
    monkeypatch.setenv("LRUN_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["report", "anything"])


def test_debug_variable_shows_the_traceback_of_a_user_error(tmp_path):
    env = {**clean_env(), "LRUN_DEBUG": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "lrun.cli", "report", str(tmp_path / "nothing")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1 and "Traceback" in result.stderr and "StoreError" in result.stderr
    assert os.environ.get("LRUN_DEBUG") is None


def test_eval_renders_its_first_episodes_and_render_writes_mp4(tmp_path):
    """`lrun eval --render K` and `lrun render -o FILE.mp4` (imageio-ffmpeg) make real-time videos."""
    pytest.importorskip("imageio_ffmpeg")
    import imageio_ffmpeg

    out = tmp_path / "eval"
    args = [
        "eval",
        str(ROOT / "models" / "walk"),
        "--episodes",
        "2",
        "--difficulty",
        "0",
        "--physics",
        "fast",
        "--out",
        str(out),
    ]
    result = run([LRUN, *args, "--render", "1"])
    assert result.returncode == 0, result.stderr
    video = out / "render" / "episode-0.mp4"
    frames = imageio_ffmpeg.read_frames(str(video))
    meta = next(frames)
    assert meta["size"] == (400, 352) and meta["duration"] == pytest.approx(10.0, abs=0.2)  # 10 s, real time
    assert not (out / "render" / "episode-1.mp4").exists()
    strip = run([LRUN, "render", str(out), "--episode", "1", "-o", str(tmp_path / "one.mp4"), "--stride", "5"])
    assert strip.returncode == 0 and (tmp_path / "one.mp4").stat().st_size > 1000
    bad = run(
        [LRUN, "eval", str(ROOT / "models" / "walk"), "--episodes", "1", "--render", "-1", "--out", str(tmp_path / "x")]
    )
    assert bad.returncode == 2 and "--render -1" in bad.stderr


def test_a_resume_over_a_truncated_rank_file_changes_nothing_and_says_so(trained, tmp_path):
    """Every rank file is checked before anything is written: config.json, the checkpoints and the other rank
    files stay as they were (they were rewritten and cut back before the refusal, once)."""
    import shutil

    damaged = tmp_path / "run"
    shutil.copytree(trained, damaged)
    (rank_file,) = (damaged / "trajectories").glob("rank-*.h5")
    with open(rank_file, "r+b") as handle:
        handle.truncate(rank_file.stat().st_size // 3)
    before = checksums(damaged)
    tiny = sets("env.physics=fast", "layout.envs_per_rank=2", "ppo.steps_per_env=80", "policy.hidden_sizes=[8]")
    result = run([LRUN, "train", "--resume", str(damaged), *tiny, *sets(f"run.run_dir={damaged}", "run.iterations=4")])
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"{rank_file}: truncated HDF5 file" in line and "nothing was changed" in line
    assert checksums(damaged) == before


def test_eval_of_a_shipped_model_writes_under_runs_not_into_the_model_directory(tmp_path):
    """Without --out, a run's evaluation goes beside the run (RUN_DIR/eval/...), but a shipped model's (its
    directory has a PROVENANCE) goes to runs/eval/<model>/ under the working directory: models/ stays as
    committed."""
    model = ROOT / "models" / "walk"
    args = [LRUN, "eval", str(model), "--episodes", "1", "--difficulty", "0", "--physics", "fast"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "runs" / "eval" / "walk" / "d0-o10-s0-n1-fast"
    assert (out / "eval.json").is_file() and f"results in {Path('runs/eval/walk/d0-o10-s0-n1-fast')}" in result.stdout
    assert not (model / "eval").exists()
    # a run directory (no PROVENANCE) keeps its evaluations beside it
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint.pt").write_bytes((model / "checkpoint.pt").read_bytes())
    args[2] = str(run_dir)
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "eval" / "d0-o10-s0-n1-fast" / "eval.json").is_file()
