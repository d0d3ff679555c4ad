"""Curriculum stages run in order, each from its parent's final checkpoint; re-runs continue (real MPI)."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch
from helpers import EXPERIMENTS, LRUN, MPIEXEC, Started, run

from lrun.checkpoint import load_checkpoint
from lrun.config import ConfigError
from lrun.curriculum import load_curriculum

TINY = (
    '["run.iterations=2", "ppo.steps_per_env=30", "layout.envs_per_rank=2", "ppo.minibatches=4", '
    '"ppo.epochs=1", "policy.hidden_sizes=[32, 32]", "run.checkpoint_every=1"]'
)


def two_stages(tmp_path: Path) -> Path:
    path = tmp_path / "two.toml"
    path.write_text(f'''
root = "{tmp_path / "runs"}"
[[stage]]
name = "walk"
config = "{EXPERIMENTS / "stages" / "walk.toml"}"
set = {TINY}
[[stage]]
name = "run"
config = "{EXPERIMENTS / "stages" / "run.toml"}"
parent = "walk"
set = {TINY}
''')
    return path


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_stages_chain_and_a_rerun_continues(tmp_path):
    curriculum = two_stages(tmp_path)
    result = run([MPIEXEC, "-n", "3", LRUN, "curriculum", str(curriculum)])
    assert result.returncode == 0, result.stderr
    walk_ckpt = tmp_path / "runs" / "walk" / "checkpoints" / "checkpoint.pt"
    assert "== stage run: starting from walk's final checkpoint" in result.stdout
    assert f"starting from {walk_ckpt} (iteration 2)" in result.stdout
    walk, second = load_checkpoint(walk_ckpt), load_checkpoint(tmp_path / "runs" / "run")
    assert second["lineage"] == [
        {"checkpoint": str(walk_ckpt), "iteration": 2, "run_dir": str(tmp_path / "runs" / "walk"), "how": "init"}
    ]
    assert second["iteration"] == 2 and second["env_steps"] == 2 * 2 * 2 * 30  # counters start afresh
    # stage 2 really started from stage 1's weights: its normaliser continued from stage 1's statistics
    counts = [c["normaliser"].view(3, -1)[2].max() for c in (second, walk)]  # [mean, var, count] per feature
    assert counts[0] == counts[1] + 2 * 2 * 2 * 30
    assert second["config"]["reward"]["weights"] == {"progress": 1.0, "ligament": 1.0, "knee_bend": 0.1}
    # each stage's rank records count that stage alone (they once carried the earlier stages' waiting too)
    for stage in ("walk", "run"):
        records = [json.loads(f.read_text()) for f in sorted((tmp_path / "runs" / stage / "ranks").glob("*.json"))]
        assert len(records) == 3
        for record in records:
            assert 0 < record["wait_wall_s"] < record["wall_s"], (stage, record)
            assert len(record["rss_mb"]) == 2  # one sample per iteration of this stage

    again = run([MPIEXEC, "-n", "3", LRUN, "curriculum", str(curriculum)])
    assert again.returncode == 0
    assert "stage walk: already complete (2 iterations): skipped" in again.stdout
    assert "stage run: already complete (2 iterations): skipped" in again.stdout

    longer = run([MPIEXEC, "-n", "3", LRUN, "curriculum", str(curriculum), "--set", "run.iterations=3"])
    assert longer.returncode == 0, longer.stderr
    assert "stage walk: resuming at iteration 2" in longer.stdout
    assert load_checkpoint(tmp_path / "runs" / "run")["iteration"] == 3


def test_policy_carries_over_exactly(tmp_path):
    """Serial: stage 2's first broadcast policy is stage 1's final one (weights compared)."""
    curriculum = two_stages(tmp_path)
    text = curriculum.read_text().replace("run.iterations=2", "run.iterations=1")
    curriculum.write_text(text)
    assert run([LRUN, "curriculum", str(curriculum), "--set", "ppo.learning_rate=1e-12"]).returncode == 0
    walk = load_checkpoint(tmp_path / "runs" / "walk")["policy"]
    second = load_checkpoint(tmp_path / "runs" / "run")["policy"]
    never_varied = [36, 37, 38, 39, 40]  # psoas strengths and the obstacle slot: constant at difficulty 0
    for name, tensor in walk.items():  # a 1e-12 learning rate leaves the inherited weights all but unchanged
        if name in ("actor.0.weight", "critic.0.weight"):  # except inputs the parent never saw vary: cut
            assert torch.all(second[name][:, never_varied] == 0)
            tensor = tensor.clone()
            tensor[:, never_varied] = 0.0
        assert torch.allclose(tensor, second[name], atol=1e-8), name


def test_bad_curricula_and_missing_parent_checkpoint(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[stage]]\nname = "run"\nconfig = "x.toml"\nparent = "walk"\n')
    with pytest.raises(ConfigError, match="parent 'walk' is not an earlier stage"):
        load_curriculum(bad)
    bad.write_text('roots = "x"\n[[stage]]\nname = "a"\nconfig = "x.toml"\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['roots'\]"):
        load_curriculum(bad)
    bad.write_text('[[stage]]\nname = "a"\nconfig = "x.toml"\n[[stage]]\nname = "a"\nconfig = "y.toml"\n')
    with pytest.raises(ConfigError, match="stage 2: name 'a' is taken by an earlier stage"):
        load_curriculum(bad)
    result = run(
        [
            LRUN,
            "train",
            "--set",
            f"run.run_dir={tmp_path / 'child'}",
            "--set",
            f"run.init_from={tmp_path / 'no-parent'}",
        ]
    )
    assert result.returncode == 2 and f"no checkpoint at {tmp_path / 'no-parent'}" in result.stderr
    for name in ("curriculum.toml", "curriculum-ppo.toml"):
        assert load_curriculum(EXPERIMENTS / name).stages[-1].parent == "obstacles"
    with pytest.raises(ConfigError, match="transfer must be one of init, blend, clone"):
        bad.write_text('[[stage]]\nname = "a"\nconfig = "x.toml"\ntransfer = "copy"\n')
        load_curriculum(bad)
    with pytest.raises(ConfigError, match=r"either a config .* or the checkpoint"):
        bad.write_text('[[stage]]\nname = "a"\nconfig = "x.toml"\ncheckpoint = "y.pt"\n')
        load_curriculum(bad)
    with pytest.raises(ConfigError, match="given by its checkpoint has a name and nothing else"):
        bad.write_text('[[stage]]\nname = "a"\ncheckpoint = "y.pt"\nset = ["run.seed=1"]\n')
        load_curriculum(bad)
    assert [s.transfer for s in load_curriculum(EXPERIMENTS / "curriculum-ppo.toml").stages] == [
        "init",
        "blend",
        "blend",
        "init",
    ]
    sac = load_curriculum(EXPERIMENTS / "curriculum.toml").stages
    assert sac[0].checkpoint == EXPERIMENTS / ".." / "models" / "walk" / "checkpoint.pt"
    assert [(s.name, s.transfer) for s in sac[1:]] == [("run", "init"), ("obstacles", "blend"), ("fast", "blend")]
    # the Slurm chain submits the stages to train: the shipped walker is no job and no dependency
    listed = run([LRUN, "curriculum", str(EXPERIMENTS / "curriculum.toml"), "--list", "--with-parents"])
    assert listed.stdout.split("\n")[:3] == ["run -", "obstacles run", "fast obstacles"], listed.stdout


def test_growing_stages_blend_and_a_finished_blend_hands_on_its_new_network(tmp_path):
    """walk (1x16) -> run blended into 2x32 (c reaches 1) -> more, initialised from the blend's new network."""
    small = TINY.replace("[32, 32]", "[16]")
    grown = TINY.replace('"run.checkpoint_every=1"', '"run.checkpoint_every=1", "blend.ramp_iterations=1"')
    path = tmp_path / "grow.toml"
    path.write_text(f'''
root = "{tmp_path / "runs"}"
[[stage]]
name = "walk"
config = "{EXPERIMENTS / "stages" / "walk.toml"}"
set = {small}
[[stage]]
name = "run"
config = "{EXPERIMENTS / "stages" / "run.toml"}"
parent = "walk"
transfer = "blend"
set = {grown}
[[stage]]
name = "more"
config = "{EXPERIMENTS / "stages" / "run.toml"}"
parent = "run"
set = {TINY}
''')
    result = run([LRUN, "curriculum", str(path)])
    assert result.returncode == 0, result.stderr
    assert "blending: frozen mlp [16] tanh gaussian" in result.stdout
    blended = load_checkpoint(tmp_path / "runs" / "run")
    assert blended["meta"]["policy_spec"]["kind"] == "blend" and blended["lineage"][-1]["how"] == "blend"
    assert float(blended["policy"]["coefficient"]) == 1.0
    more = load_checkpoint(tmp_path / "runs" / "more")
    assert more["meta"]["policy_spec"]["kind"] == "mlp" and more["meta"]["hidden_sizes"] == [32, 32]
    assert more["lineage"][-1]["how"] == "init" and len(more["lineage"]) == 2


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_a_later_stage_starts_from_a_provided_checkpoint(tmp_path):
    """`--from walk=CKPT`: the walk stage is not trained; the run stage starts from that checkpoint (a shipped
    model, say); a missing checkpoint or unknown stage is refused with one line."""
    shipped = tmp_path / "shipped"
    walk_cfg = EXPERIMENTS / "stages" / "walk.toml"
    tiny = ["run.iterations=1", "ppo.steps_per_env=30", "layout.envs_per_rank=2", "ppo.minibatches=4"]
    tiny += ["ppo.epochs=1", "policy.hidden_sizes=[32, 32]"]
    sets_ = [arg for item in [*tiny, f"run.run_dir={shipped}"] for arg in ("--set", item)]
    assert run([LRUN, "train", str(walk_cfg), *sets_]).returncode == 0
    curriculum = two_stages(tmp_path)
    result = run([MPIEXEC, "-n", "2", LRUN, "curriculum", str(curriculum), "--from", f"walk={shipped}"])
    assert result.returncode == 0, result.stderr
    checkpoint = shipped / "checkpoints" / "checkpoint.pt"
    assert f"== stage walk: provided ({checkpoint}): not trained" in result.stdout
    assert f"== stage run: starting from walk = {checkpoint}" in result.stdout
    assert not (tmp_path / "runs" / "walk").exists()
    assert load_checkpoint(tmp_path / "runs" / "run")["lineage"][0]["checkpoint"] == str(checkpoint)
    for bad, message in (
        (f"walk={tmp_path / 'nothing'}", "--from walk="),
        (f"sprint={shipped}", "--from names no stage 'sprint'"),
        ("walk", "expected STAGE=CHECKPOINT"),
    ):
        refused = run([LRUN, "curriculum", str(curriculum), "--root", str(tmp_path / "other"), "--from", bad])
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1


def test_a_missing_checkpoint_is_named_where_the_user_wrote_it(tmp_path):
    """A stage's `checkpoint =` in the file that is not there is refused naming the file and stage, not --from;
    a --from for the same stage wins over the file and is named as --from when it is the one missing; --report
    with --stage is refused (the report is the whole chain's)."""
    curriculum = tmp_path / "walker.toml"
    missing = tmp_path / "nothing.pt"
    curriculum.write_text(f'root = "{tmp_path / "runs"}"\n[[stage]]\nname = "walk"\ncheckpoint = "{missing}"\n')
    refused = run([LRUN, "curriculum", str(curriculum), "--report"])
    assert refused.returncode == 2 and f"{curriculum}: stage 'walk': checkpoint: " in refused.stderr, refused.stderr
    assert "--from" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    refused = run([LRUN, "curriculum", str(curriculum), "--report", "--from", f"walk={tmp_path / 'other.pt'}"])
    assert refused.returncode == 2 and f"--from walk={tmp_path / 'other.pt'}: " in refused.stderr, refused.stderr
    refused = run([LRUN, "curriculum", str(curriculum), "--report", "--stage", "walk"])
    assert refused.returncode == 2 and "--report writes the whole chain's table" in refused.stderr, refused.stderr


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_make_run_s_curriculum_carries_the_shipped_walker_through_every_sac_stage(tmp_path):
    """experiments/curriculum-tiny.toml (make run): run, obstacles and fast from models/walk under mpiexec, each
    stage's checkpoint descending from the walker, the critics carried (copied, widened, copied)."""
    root = tmp_path / "tiny"
    tiny = EXPERIMENTS / "curriculum-tiny.toml"
    result = run([MPIEXEC, "-n", "3", LRUN, "curriculum", str(tiny), "--root", str(root), "--eval", "1"])
    assert result.returncode == 0, result.stderr
    assert "== stage walk: provided" in result.stdout and not (root / "walk").exists()
    for how in ("copied", "widened", "copied"):
        assert f"critics and temperature {how} from the parent" in result.stdout
    walker = EXPERIMENTS.parent / "models" / "walk" / "checkpoint.pt"
    fast = load_checkpoint(root / "fast")
    assert [step["how"] for step in fast["lineage"]] == ["init", "blend", "blend"]
    assert Path(fast["lineage"][0]["checkpoint"]).resolve() == walker.resolve()
    spec = fast["meta"]["policy_spec"]
    assert spec["kind"] == "blend" and spec["frozen"]["kind"] == "blend"
    assert spec["student"]["hidden_sizes"] == [256] * 3
    assert fast["optimizer"]["critic"]["q1.0.weight"].shape[0] == 256
    # --eval 1: every stage scored at its own task and at round 2 (once where they are the same), then the table
    scored = {"walk": ["flat", "round2"], "run": ["flat", "round2"], "obstacles": ["round2"], "fast": ["round2"]}
    for stage, labels in scored.items():
        assert sorted(p.name for p in (root / "eval" / stage).iterdir()) == [f"{x}-s4242" for x in labels]
        for label in labels:
            assert f"== stage {stage}: evaluating at {label} (1 episode, seed 4242)" in result.stdout
            evaluation = json.loads((root / "eval" / stage / f"{label}-s4242" / "eval.json").read_text())
            assert evaluation["settings"]["setting"] == label and evaluation["settings"]["seed"] == 4242
            assert Path(evaluation["checkpoint"]).resolve() == (
                walker.resolve() if stage == "walk" else (root / stage / "checkpoints" / "checkpoint.pt").resolve()
            )
    walk_flat = json.loads((root / "eval" / "walk" / "flat-s4242" / "eval.json").read_text())["summary"]
    assert walk_flat["mean_distance_m"] > 15 and walk_flat["falls"] == 0  # the shipped walker walks
    table = (root / "curriculum.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:6]] == ["| walk", "| run", "| obstacles", "| fast"]
    assert "| walk | SAC | trained elsewhere | 2x128; 2x128 | 2.00 M / 2.00 M |" in table[2]
    assert "| fast | SAC | obstacles (blend) | 3x256; 2x256 |" in table[5] and "= round 2" in table[5]
    assert f"flat: mean {walk_flat['mean_distance_m']:.2f} m" in table[2] and "STALE" not in "".join(table)
    assert (root / "curriculum.png").stat().st_size > 0

    # a re-run keeps what is done: no stage trains, no evaluation runs again
    again = run([MPIEXEC, "-n", "3", LRUN, "curriculum", str(tiny), "--root", str(root), "--eval", "1"])
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already done") == 6 and "evaluating" not in again.stdout
    assert (root / "curriculum.md").read_text().splitlines() == table


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_a_stop_signal_ends_a_stage_s_evaluation_between_episodes_and_a_re_run_resumes_it(tmp_path):
    """A curriculum of the provided walker alone (no training): --eval 9 scores it on flat ground and at round 2
    (3 episodes per rank); SIGTERM (as Slurm's before its time limit) ends the evaluation after each rank's
    current episode with exit 3 and the finished episodes kept; the re-run resumes and completes both; a third
    run has nothing left to do."""
    walker = EXPERIMENTS.parent / "models" / "walk" / "checkpoint.pt"
    curriculum = tmp_path / "walker.toml"
    curriculum.write_text(f'root = "{tmp_path / "runs"}"\n[[stage]]\nname = "walk"\ncheckpoint = "{walker}"\n')
    command = [MPIEXEC, "-n", "3", LRUN, "curriculum", str(curriculum), "--eval", "9"]
    evaluations = [tmp_path / "runs" / "eval" / "walk" / f"{x}-s4242" for x in ("flat", "round2")]
    with Started(command) as started:
        started.read_until("== stage walk: evaluating at flat (9 episodes, seed 4242)")
        started.read_until("  rank 0: 1/3 episodes")  # every rank is past its set-up, in its first episode
        started.send_signal(signal.SIGTERM)
        stopped = started.finish(timeout=120)
    assert stopped.returncode == 3, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert "== stage walk: evaluation " in stopped.stdout and "stopped part way" in stopped.stdout
    assert "Traceback" not in stopped.stderr
    assert not (evaluations[0] / "eval.json").exists() and not evaluations[1].exists()
    # the table is written on the way out too, the stopped evaluation counted from its rank files
    stopped_table = (tmp_path / "runs" / "curriculum.md").read_text()
    part = re.search(r"\| flat: part way \((\d+) of 9 episodes\) \| - \|", stopped_table)
    assert part and 1 <= int(part.group(1)) < 9, stopped_table
    again = run(command)
    assert again.returncode == 0, again.stderr
    assert "resuming the evaluation at" in again.stdout and "episodes finished earlier" in again.stdout
    for out in evaluations:
        assert json.loads((out / "eval.json").read_text())["summary"]["episodes"] == 9
    table = (tmp_path / "runs" / "curriculum.md").read_text()
    assert "| walk | SAC | trained elsewhere |" in table and "flat: mean 17.6" in table
    last = run(command)
    assert last.returncode == 0 and last.stdout.count("already done") == 2
    # --report alone (one process, no MPI traffic) rewrites the same table from what is on disk
    (tmp_path / "runs" / "curriculum.md").unlink()
    report = run([LRUN, "curriculum", str(curriculum), "--report"])
    assert report.returncode == 0 and (tmp_path / "runs" / "curriculum.md").read_text() == table
