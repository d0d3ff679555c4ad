"""SAC's policies carried into a new stage end to end: plain init, blending and cloning, with the critics and the
features the source never saw vary. Real OpenSim, real MPI, real checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import LRUN, MPIEXEC, run, sets

import lrun
from lrun.api import load_policy
from lrun.checkpoint import load_checkpoint
from lrun.env.features import episode_features, features
from lrun.env.layout import EpisodeLayout

SAC = sets(
    "env.physics=fast",
    "layout.envs_per_rank=2",
    "ppo.steps_per_env=32",
    "run.algorithm=sac",
    "policy.distribution=squashed",
    "policy.features=relative-v1",
    "sac.batch_size=32",
    "sac.updates_per_step=0.25",
    "sac.learning_starts=32",
)
#: the round-2 task, as a stage after a walker: obstacles and weakened muscles the source never saw
OBSTACLES = sets("env.difficulty=2", "env.max_obstacles=3")
NO_UPDATES = sets("sac.learning_starts=1000000")  # collect only: the networks stay as the transfer made them
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
OBS = 38  # relative-v1
NEW = [33, 34, 35, 36, 37]  # psoas left, right, obstacle dx, y, radius: constant at difficulty 0


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A (briefly) trained 1x16 SAC policy at difficulty 0, critics 2x16, with its stored trajectories."""
    run_dir = tmp_path_factory.mktemp("sac-transfer") / "source"
    command = [LRUN, "train", *SAC, *sets("policy.hidden_sizes=[16]", "sac.hidden_sizes=[16, 16]")]
    result = run([*command, *sets("run.iterations=3", f"run.run_dir={run_dir}")])
    assert result.returncode == 0, result.stderr
    return run_dir


def critic_weights(payload: dict, key: str = "critic") -> torch.Tensor:
    return payload["optimizer"][key]["q1.0.weight"]


def carry_by_init(source: Path, run_dir: Path, *options: str) -> tuple[dict, dict, str]:
    """One update-free iteration of a SAC run initialised from `source` on the obstacle task; returns the run's
    checkpoint, the source's and the run's output."""
    result = run(
        [
            *(LRUN, "train", *SAC, *OBSTACLES, *NO_UPDATES, *options),
            *sets("policy.hidden_sizes=[16]", "sac.hidden_sizes=[16, 16]", "run.iterations=1"),
            *sets(f"run.init_from={source}", f"run.run_dir={run_dir}"),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "critics and temperature copied from the parent" in result.stdout
    return load_checkpoint(run_dir), load_checkpoint(source), result.stdout


def assert_first_layers_carried(mine: dict, theirs: dict, zero: list[int]) -> None:
    """The actor's and value head's first layers: zero weight on the inputs `zero`, the source's on the others
    it saw."""
    keep = [i for i in range(OBS) if i not in NEW]
    for name in ("actor.0.weight", "critic.0.weight"):
        assert torch.equal(mine["policy"][name][:, keep], theirs["policy"][name][:, keep])
        assert torch.all(mine["policy"][name][:, zero] == 0)


def test_plain_init_carries_actor_critics_and_temperature_and_cuts_the_new_inputs(source, tmp_path):
    mine, theirs, stdout = carry_by_init(source, tmp_path / "init")
    assert "5 features the parent never saw vary start their statistics afresh" in stdout
    keep = [i for i in range(OBS) if i not in NEW]
    assert_first_layers_carried(mine, theirs, NEW)
    for key in ("critic", "target"):
        assert torch.equal(critic_weights(mine, key)[:, keep], critic_weights(theirs, key)[:, keep])
        assert torch.all(critic_weights(mine, key)[:, NEW] == 0)
        assert torch.equal(critic_weights(mine, key)[:, OBS:], critic_weights(theirs, key)[:, OBS:])  # actions
    assert torch.equal(mine["optimizer"]["log_alpha"], theirs["optimizer"]["log_alpha"])
    # the new features' statistics are this stage's own (obstacles ahead now), the others carried on
    stats, old = mine["normaliser"].view(3, -1), theirs["normaliser"].view(3, -1)
    assert torch.all(stats[2, NEW] == 2 * 32) and torch.all(stats[2, keep] == old[2, keep] + 2 * 32)
    assert torch.all(stats[1, [35, 37]] > 0)


def test_a_sac_blend_at_coefficient_zero_acts_as_its_source_over_obstacles(source, tmp_path):
    """The source (a flat-ground walker) blended into a bigger network at c = 0 on the obstacle task: the
    critics are widened from the source's, and `lrun eval` over obstacles acts exactly as the source does with
    its own statistics (the obstacle and strength features it never saw reach it as 0)."""
    run_dir = tmp_path / "zero"
    result = run(
        [
            *(LRUN, "blend", str(source), *SAC, *OBSTACLES, *NO_UPDATES),
            *sets("blend.end=0", "policy.hidden_sizes=[32]", "sac.hidden_sizes=[32, 32]", "run.iterations=2"),
            *sets(f"run.run_dir={run_dir}"),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "blending: frozen mlp [16] tanh squashed" in result.stdout
    assert "critics and temperature widened from the parent" in result.stdout
    mine, theirs = load_checkpoint(run_dir), load_checkpoint(source)
    keep = [i for i in range(OBS + 18) if i not in NEW]
    assert torch.equal(critic_weights(mine)[:16, keep], critic_weights(theirs)[:, keep])
    out = tmp_path / "eval"
    result = run(
        [LRUN, "eval", str(run_dir), "--episodes", "2", "--physics", "fast", "--obstacles", "3", "--out", str(out)]
    )
    assert result.returncode == 0, result.stderr
    with h5py.File(out / "trajectories" / "rank-0000.h5", "r") as f:
        obs, applied = f["steps/obs"][:], f["steps/excitations"][:]
    assert len(obs) > 20 and np.ptp(obs[:, 38]) > 0  # obstacles ahead, passed or not
    policy, normaliser, payload = load_policy(source)
    x = normaliser.normalise(features(payload["config"]["policy"]["features"], obs), clip=False)
    raw, _, _ = policy.act(x, deterministic=True)
    np.testing.assert_allclose(applied, policy.env_action(raw, np.zeros(18), np.ones(18)), rtol=0, atol=1e-6)


def test_plain_init_onto_relative_v2_adds_the_passed_obstacle_and_acts_as_the_source(source, tmp_path):
    """A relative-v1 policy carried onto relative-v2 (its features plus the remembered passed obstacle): the
    three new inputs get zero weight in the actor and both critics, their statistics start afresh, and `lrun
    eval` over obstacles acts exactly as the source does on its own features."""
    run_dir = tmp_path / "v2"
    mine, theirs, stdout = carry_by_init(source, run_dir, *sets("policy.features=relative-v2"))
    assert "8 features the parent never saw vary start their statistics afresh" in stdout
    added = [OBS, OBS + 1, OBS + 2]
    assert mine["meta"]["obs_size"] == OBS + 3
    assert_first_layers_carried(mine, theirs, [*NEW, *added])
    for key in ("critic", "target"):
        assert torch.all(critic_weights(mine, key)[:, added] == 0)
        assert torch.equal(critic_weights(mine, key)[:, OBS + 3 :], critic_weights(theirs, key)[:, OBS:])  # actions
    out = tmp_path / "eval"
    command = [LRUN, "eval", str(run_dir), "--episodes", "2", "--physics", "fast", "--obstacles", "3"]
    result = run([*command, "--out", str(out)])
    assert result.returncode == 0, result.stderr
    falls = json.loads((out / "eval.json").read_text())["falls"]  # every fall classed by its last foot meeting
    assert sum(falls["approaches"]["falls_after"].values()) == falls["falls"]
    with h5py.File(out / "trajectories" / "rank-0000.h5", "r") as f:
        obs, applied, ids = f["steps/obs"][:], f["steps/excitations"][:], f["steps/episode_id"][:]
    policy, normaliser, _ = load_policy(run_dir)
    x = normaliser.normalise(episode_features("relative-v2", obs, ids), clip=False)
    raw, _, _ = policy.act(x, deterministic=True)
    np.testing.assert_allclose(applied, policy.env_action(raw, np.zeros(18), np.ones(18)), rtol=0, atol=1e-6)
    parent, _, _ = load_policy(source)  # the source's own network on the first 38 features (those it cut: 0)
    seen = x[:, :OBS].copy()
    seen[:, NEW] = 0.0
    theirs_raw, _, _ = parent.act(seen, deterministic=True)
    np.testing.assert_allclose(raw, theirs_raw, rtol=0, atol=1e-6)
    # a loaded agent remembers across its calls and forgets at an episode start (SB3's predict signature too)
    agent = lrun.load(run_dir)
    layout = EpisodeLayout(np.array([[1.0, 0.0, 0.1]]), (1.0, 1.0))
    for x in np.arange(0.0, 1.5, 0.04):
        step = obs[0].astype(np.float64)
        step[1], step[38:41] = x, layout.next_obstacle(x)
        agent.act(step)
        passed = agent._stream.memory[0, 3:6]
    assert np.allclose(passed, [1.0, 0.0, 0.1])
    agent.predict(step, episode_start=np.array([True]))
    assert np.isnan(agent._stream.memory[0, 3:6]).all()


@needs_mpi
def test_a_sac_blend_trains_under_mpi_resumes_leaves_the_frozen_network_alone_and_exports_the_new_one(source, tmp_path):
    run_dir = tmp_path / "blend"
    common = [MPIEXEC, "-n", "3", LRUN, "blend", str(source), *SAC, *OBSTACLES, "--ramp", "4"]
    common += sets("policy.hidden_sizes=[32, 32]", "sac.hidden_sizes=[32, 32]", f"run.run_dir={run_dir}")
    result = run([*common, *sets("run.iterations=2")])
    assert result.returncode == 0, result.stderr
    result = run([*common, *sets("run.iterations=6"), "--resume", str(run_dir)])
    assert result.returncode == 0, result.stderr
    with open(run_dir / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["blend/coefficient"]) for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert float(rows[3]["blend/distillation_loss"]) > 0 and float(rows[3]["losses/updates"]) > 0
    checkpoint, trained = load_checkpoint(run_dir), load_checkpoint(source)
    for name, tensor in trained["policy"].items():
        assert torch.equal(checkpoint["policy"][f"frozen.{name}"], tensor)
    # blend.temperature = "hold": the parent's temperature while c < 1, tuned again once the new network acts alone
    parent_alpha = float(trained["optimizer"]["log_alpha"].exp())
    ramping = [float(r["losses/alpha"]) for r in rows[:4] if float(r["losses/updates"] or 0) > 0]
    assert ramping and ramping == pytest.approx([parent_alpha] * len(ramping), rel=1e-6)
    assert float(checkpoint["optimizer"]["log_alpha"].exp()) != pytest.approx(parent_alpha, rel=1e-4)

    # exported to ship (lrun export): the finished blend's new network alone acts as the blend did, the critics
    # stay for a new run to carry, and nothing that only --resume reads is kept (so it cannot be resumed)
    exported = tmp_path / "exported"
    result = run([LRUN, "export", str(run_dir), str(exported)])
    assert result.returncode == 0 and "the blend's new network alone" in result.stdout, result.stderr
    shipped = load_checkpoint(exported)
    assert shipped["meta"]["policy_spec"]["kind"] == "mlp" and "coefficient" not in shipped["policy"]
    assert set(shipped["optimizer"]) == {"critic", "target", "log_alpha"} and "acting_policy" not in shipped
    assert (exported / "checkpoint.pt").stat().st_size < (run_dir / "checkpoints/checkpoint.pt").stat().st_size
    obs = np.random.default_rng(0).normal(size=(16, 41))
    assert np.array_equal(lrun.Agent.load(run_dir).act(obs), lrun.Agent.load(exported).act(obs))
    again = run([LRUN, "export", str(run_dir), str(exported)])
    assert again.returncode == 2 and "--overwrite" in again.stderr and len(again.stderr.splitlines()) == 1
    plain = [LRUN, "train", *SAC, *OBSTACLES, *NO_UPDATES]
    plain += sets("policy.hidden_sizes=[32, 32]", "sac.hidden_sizes=[32, 32]", "run.iterations=1")
    resumed = run([*plain, *sets(f"run.run_dir={tmp_path / 'more'}"), "--resume", str(exported)])
    assert resumed.returncode == 2 and "cannot be resumed" in resumed.stderr, resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1
    result = run([*plain, *sets(f"run.init_from={exported}", f"run.run_dir={tmp_path / 'init'}")])
    assert result.returncode == 0 and "critics and temperature copied from the parent" in result.stdout, result.stderr
    started = load_checkpoint(tmp_path / "init")
    for key in ("critic", "target"):
        assert all(torch.equal(v, started["optimizer"][key][k]) for k, v in shipped["optimizer"][key].items())
    assert torch.equal(started["optimizer"]["log_alpha"], shipped["optimizer"]["log_alpha"])


def test_sac_cloning_imitates_the_stored_states_then_trains(source, tmp_path):
    run_dir = tmp_path / "clone"
    result = run(
        [
            *(LRUN, "clone", str(source), *SAC),
            *sets("policy.hidden_sizes=[32, 32]", "sac.hidden_sizes=[16, 16]", "clone.epochs=10"),
            *sets("clone.minibatch_size=32", "run.iterations=1", f"run.run_dir={run_dir}"),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "cloning on 192 stored states" in result.stdout and "then training" in result.stdout
    assert "critics and temperature copied from the parent" in result.stdout
    with open(run_dir / "clone.csv") as handle:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)]
    assert rows[-1]["holdout_kl"] < 0.5 * rows[0]["holdout_kl"], rows
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["lineage"][-1]["how"] == "clone" and checkpoint["meta"]["policy_spec"]["hidden_sizes"] == [32, 32]
    assert torch.all(checkpoint["policy"]["actor.0.weight"][:, NEW] == 0)  # the clone acts alone: inputs cut


def test_sac_cloning_onto_relative_v2_maps_the_stored_states_episode_by_episode(source, tmp_path):
    run_dir = tmp_path / "clone-v2"
    result = run(
        [
            *(LRUN, "clone", str(source), *SAC, *sets("policy.features=relative-v2")),
            *sets("policy.hidden_sizes=[32]", "sac.hidden_sizes=[16, 16]", "clone.epochs=4"),
            *sets("clone.minibatch_size=32", "run.iterations=1", f"run.run_dir={run_dir}"),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "cloning on 192 stored states" in result.stdout
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["meta"]["obs_size"] == OBS + 3 and checkpoint["config"]["policy"]["features"] == "relative-v2"
    assert torch.all(checkpoint["policy"]["actor.0.weight"][:, [*NEW, OBS, OBS + 1, OBS + 2]] == 0)


@needs_mpi
def test_a_sac_transfer_study_over_seeds_with_plain_init(source, tmp_path):
    """`lrun transfer-study --methods init,blend --seeds 2` on the obstacle task: every method and seed on the same
    budget, init keeping the source's network, each scored by lrun eval, the comparison with the seeds' range."""
    out = tmp_path / "study"
    study = [MPIEXEC, "-n", "3", LRUN, "transfer-study", str(source), "--out", str(out), *SAC, *OBSTACLES]
    study += sets("policy.hidden_sizes=[32, 32]", "sac.hidden_sizes=[32, 32]", "run.iterations=1")
    result = run([*study, "--methods", "init,blend", "--seeds", "2", "--eval-episodes", "1"], timeout=600)
    assert result.returncode == 0, result.stderr
    methods = json.loads((out / "comparison.json").read_text())["methods"]
    assert set(methods) == {"init", "blend"} and all(len(m["seeds"]) == 2 for m in methods.values())
    assert len({s["env_steps"] for m in methods.values() for s in m["seeds"]}) == 1  # one budget
    for method in ("init", "blend"):
        for k in (0, 1):
            checkpoint = load_checkpoint(out / method / f"seed-{k}")
            assert checkpoint["config"]["run"]["seed"] == k
            settings = json.loads((out / method / f"seed-{k}" / "eval" / "eval.json").read_text())["settings"]
            assert settings["difficulty"] == 2 and settings["physics"] == "graders-2017"
    init = load_checkpoint(out / "init" / "seed-0")
    assert init["meta"]["policy_spec"]["hidden_sizes"] == [16] and init["lineage"][-1]["how"] == "init"
    assert "(2 seeds)" in (out / "comparison.txt").read_text()
    # seed by seed: a study stopped part way has whole comparisons of its first seeds
    order = [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("== ")]
    assert order == ["== init seed 0", "== blend seed 0", "== init seed 1", "== blend seed 1"], order
    # each run is scored as soon as it is trained
    scored_at = result.stdout.index(f"wrote {out / 'init' / 'seed-0' / 'eval' / 'eval.json'}")
    assert result.stdout.index("== init seed 0") < scored_at < result.stdout.index("== blend seed 0")
    # part way (a sitting ended after init's second seed): the comparison holds what finished, marked as such
    from lrun.transfer_study import write_comparison

    partial = {("init", 0): None, ("blend", 0): None, ("init", 1): None}
    text, rows = write_comparison(out, str(source), partial, ["init", "blend"], 2)
    assert set(rows["methods"]) == {"init", "blend"} and len(rows["methods"]["init"]["seeds"]) == 2
    assert "part way: blend (1 of 2 seeds) finished so far" in text
    assert json.loads((out / "comparison.json").read_text())["unfinished"] == ["blend (1 of 2 seeds)"]
    # run again (the next sitting): nothing trains, and each evaluation continues instead of starting over
    scored = (out / "blend" / "seed-1" / "eval" / "eval.json").read_text()
    again = run([*study, "--methods", "init,blend", "--seeds", "2", "--eval-episodes", "1"], timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(": done") == 4 and again.stdout.count("1 episodes finished earlier, 0 to run") == 4
    assert (
        json.loads((out / "blend" / "seed-1" / "eval" / "eval.json").read_text())["summary"]
        == json.loads(scored)["summary"]
    )
    assert "part way" not in (out / "comparison.txt").read_text()  # the whole study again


def test_ppo_continues_a_sac_policy_cloned_across_distribution_families(source, tmp_path):
    """PPO's Gaussian student imitates the SAC teacher's deterministic excitations (no KL across families), then
    PPO trains it; blending across families is refused in one line."""
    run_dir = tmp_path / "ppo"
    ppo = sets("env.physics=fast", "layout.envs_per_rank=2", "ppo.steps_per_env=32", "ppo.minibatches=4")
    ppo += sets("ppo.epochs=1", "policy.features=relative-v1", "policy.hidden_sizes=[32, 32]")
    command = [LRUN, "clone", str(source), *ppo, *sets("clone.epochs=10", "clone.minibatch_size=32")]
    result = run([*command, *sets("run.iterations=1", f"run.run_dir={run_dir}")])
    assert result.returncode == 0, result.stderr
    with open(run_dir / "clone.csv") as handle:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)]
    assert rows[-1]["holdout_kl"] < 0.5 * rows[0]["holdout_kl"], rows  # the excitations' squared error
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["meta"]["policy_spec"]["distribution"] == "gaussian" and checkpoint["iteration"] == 1
    blend = run([LRUN, "blend", str(source), *ppo, *sets(f"run.run_dir={tmp_path / 'b'}")])
    assert blend.returncode == 2 and "a blend needs them to match (cloning does not)" in blend.stderr
