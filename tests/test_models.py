"""The shipped policies under models/ are what their files say: small, with provenance, and their evaluation
reproduces with this lrun (an episode re-run gives the recorded distance to the millimetre)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import LRUN, ROOT, run

from lrun.checkpoint import load_checkpoint

CHECKPOINTS = sorted(p for p in (ROOT / "models").glob("*") if (p / "checkpoint.pt").is_file())


def in_progress(model: Path) -> bool:
    """A run's checkpoint committed so it can continue elsewhere (its PROVENANCE opens with "In-progress"), not
    a shipped policy: it has no evaluation yet."""
    return (model / "PROVENANCE").read_text().lstrip().lower().startswith("in-progress")


MODELS = [m for m in CHECKPOINTS if not in_progress(m)]
IN_PROGRESS = [m for m in CHECKPOINTS if in_progress(m)]


def documented_checkpoint(model: Path, needed: tuple[str, ...]) -> tuple[dict, str]:
    """The model's checkpoint (under 2 MB) and its PROVENANCE, which names each of `needed` and the checkpoint's
    env steps."""
    checkpoint = load_checkpoint(model)
    assert (model / "checkpoint.pt").stat().st_size < 2 * 1024 * 1024
    provenance = (model / "PROVENANCE").read_text()
    for word in needed:
        assert word in provenance.lower(), word
    assert f"{checkpoint['env_steps']:,}" in provenance or str(checkpoint["env_steps"]) in provenance
    return checkpoint, provenance


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_shipped_model_is_small_documented_and_reproduces_its_evaluation(model: Path, tmp_path):
    checkpoint, _ = documented_checkpoint(model, ("commit", "command", "env steps", "wall time", "machine"))
    recorded = json.loads((model / "eval.json").read_text())
    settings = recorded["settings"]
    assert settings["physics"] in ("graders-2017", "accurate", "reference")  # reference: accurate's earlier name
    assert recorded["iteration"] == checkpoint["iteration"]
    with open(model / "episodes.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == settings["episodes"] == recorded["summary"]["episodes"]
    first = rows[0]
    assert (model / f"{model.name}.gif").stat().st_size > 0

    out = tmp_path / "again"
    args = ["--episodes", "1", "--seed", str(settings["seed"]), "--out", str(out)]
    if settings.get("setting") == "round2":  # the 2017 round-2 headline: >= 500 episodes (issue 21)
        assert settings["episodes"] >= 500
        args += ["--setting", "round2"]
    else:
        assert settings["difficulty"] == 0 and settings["episodes"] >= 100
        args += ["--difficulty", "0", "--physics", settings["physics"]]
    if not settings["deterministic"]:
        args.append("--stochastic")
    result = run([LRUN, "eval", str(model), *args], timeout=300)
    assert result.returncode == 0, result.stderr
    with open(out / "episodes.csv") as handle:
        again = next(csv.DictReader(handle))
    assert int(again["seed"]) == int(first["seed"])
    assert abs(float(again["distance"]) - float(first["distance"])) < 1e-3
    assert again["fell"] == first["fell"]
    # the summary says how the knees were used, from the very steps the store holds
    gait = json.loads((out / "eval.json").read_text())["gait"]
    with h5py.File(out / "trajectories" / "master.h5", "r") as f:
        knee_r = f["steps/obs"][:, 7]
    assert gait["steps"] == len(knee_r) == int(again["length"])
    assert gait["right"]["past_ligament"] == pytest.approx(np.mean(knee_r > np.deg2rad(10)))


@pytest.mark.parametrize("model", IN_PROGRESS, ids=[m.name for m in IN_PROGRESS])
def test_in_progress_checkpoint_is_small_and_says_how_to_resume_it(model: Path):
    checkpoint, provenance = documented_checkpoint(model, ("commit", "command", "env steps", "machine", "--resume"))
    assert f"iteration {checkpoint['iteration']}" in provenance
    recipes = [word.strip("`") for word in provenance.split() if word.strip("`").endswith(".toml")]
    assert recipes and all((ROOT / recipe).is_file() for recipe in recipes), recipes


@pytest.mark.skipif(not (ROOT / "models" / "walk" / "checkpoint.pt").is_file(), reason="no models/walk")
def test_make_demo_evaluates_and_draws_the_shipped_policy(tmp_path):
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make")
    out = tmp_path / "demo"
    result = subprocess.run(["make", "-C", str(ROOT), "demo", f"DEMO_DIR={out}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "eval" / "eval.json").read_text())["summary"]
    assert summary["episodes"] == 2 and (out / "episode.gif").stat().st_size > 10_000
    assert f"an episode: {out}/episode.gif" in result.stdout
    # difficulty 0 on the graders' physics is the flat setting: named, and no 2017 round-2 figures beside it
    assert "setting flat" in result.stdout and "2017 round 2" not in result.stdout
