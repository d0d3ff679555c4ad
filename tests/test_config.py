"""Config parsing and validation, rank-layout checks, checkpoints and rollout buffers (no MPI processes)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lrun.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lrun.config import ConfigError, TrainConfig, build_config, describe_keys, load_config
from lrun.mpi import LayoutError, check_layout, slurm_pmi2_netmod
from lrun.rollout import Rollout


def test_defaults_overrides_and_types(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[ppo]\nlearning_rate = 1\n[policy]\nhidden_sizes = [16, 8]\n[env]\nid = "gymnasium:Pendulum-v1"\n')
    config = load_config(path, ["run.run_dir=runs/x", "ppo.epochs=3", "policy.activation=relu"])
    assert config.ppo.learning_rate == 1.0 and isinstance(config.ppo.learning_rate, float)
    assert config.policy.hidden_sizes == [16, 8] and config.policy.activation == "relu"
    assert config.run.run_dir == "runs/x" and config.ppo.epochs == 3
    assert config.env.id == "gymnasium:Pendulum-v1"
    assert build_config(config.to_dict()) == config  # the saved resolved config round-trips
    assert "[ppo]" in describe_keys() and "learning_rate (float, default 0.0003)" in describe_keys()


def test_one_entry_of_a_table_is_set_keeping_the_others():
    data = {"reward": {"weights": {"progress": 3.0, "alive": 1.0}}, "env": {"kwargs": {"obstacle_radius_scale": 0.1}}}
    config = build_config(data, ["reward.weights.alive=0.25", "reward.weights.fall=3", "env.kwargs.weakening=psoas"])
    assert config.reward.weights == {"progress": 3.0, "alive": 0.25, "fall": 3}
    assert config.env.kwargs == {"obstacle_radius_scale": 0.1, "weakening": "psoas"}
    assert build_config({}, ["env.kwargs.fault_every=7"]).env.kwargs == {"fault_every": 7}  # a table the file lacks
    assert data["reward"]["weights"]["alive"] == 1.0  # the caller's dict is not changed


@pytest.mark.parametrize(
    "data, overrides, message",
    [
        ({"ppo": {"learnin_rate": 1e-3}}, [], r"unknown config key 'ppo.learnin_rate' \(did you mean 'learning_rate'"),
        ({"ppoo": {}}, [], r"unknown config key 'ppoo' \(did you mean 'ppo'"),
        ({}, ["ppo.epochs=2.5"], "ppo.epochs: expected an integer, got 2.5"),
        ({}, ["ppo.gamma=fast"], "ppo.gamma: expected a number"),
        ({}, ["policy.normalise_observations=1"], "expected true or false"),
        ({}, ["policy.hidden_sizes=[64, 'x']"], r"policy.hidden_sizes\[1\]: expected an integer"),
        ({}, ["layout.envs_per_rank=0"], "zero envs"),
        ({}, ["layout.learners=0"], "layout.learners = 0: must be >= 1"),
        ({}, ["env.physics=warp"], "env.physics = 'warp': must be one of"),
        # every value's range and finiteness, named with the value and the rule (issue 13)
        ({}, ["ppo.clip_coef=-0.2"], r"ppo.clip_coef = -0.2: must be > 0"),
        ({}, ["ppo.max_grad_norm=-1"], r"ppo.max_grad_norm = -1.0: must be > 0"),
        ({}, ["ppo.learning_rate=inf"], r"ppo.learning_rate = inf: must be a finite number"),
        ({}, ["policy.init_log_std=nan"], r"policy.init_log_std = nan: must be a finite number"),
        ({}, ["run.seed=-1"], r"run.seed = -1: must be in \[0, 2\*\*32\)"),
        ({}, ["ppo.minibatches=5000"], r"ppo.minibatches = 5000: must be <= the samples of one simulator's rollout"),
        (
            {},
            ["env.kwargs={warp = 9}"],
            r"env.kwargs.warp: not an option of lrun/Run-v0 \(options: model_file, fault_every",
        ),
        ({}, ["env.kwargs={init_speed = [2, 1]}"], r"env.kwargs.init_speed \[2, 1\]: need 0 <= low <= high"),
        (
            {},
            ["env.kwargs={obstacle_radius_scale = 0}"],
            r"env.kwargs.obstacle_radius_scale must be a number of metres in \(0, 0.5\], got 0",
        ),
        ({}, ["ppo.target_kl=-0.01"], r"ppo.target_kl = -0.01: must be >= 0"),
        ({}, ["ppo.symmetry_loss=-1"], r"ppo.symmetry_loss = -1.0: must be >= 0"),
        ({}, ["env.id=gymnasium:Pendulum-v1", "ppo.symmetry_loss=1"], "ppo.symmetry_loss needs env.id = lrun/Run-v0"),
        ({}, ["run.run_dir="], r"run.run_dir = '': must be a directory name"),
        ({}, ["reward.weights={alive = inf}"], r"reward.weights.alive = inf: must be a finite number"),
        ({}, ["epochs=3"], "section.key"),
        ({}, ["env.kwargs.warp=9"], r"env.kwargs.warp: not an option of lrun/Run-v0"),
        ({}, ["env.kwarg.fault_every=9"], r"unknown config key 'env.kwarg' \(did you mean 'kwargs'"),
        ({}, ["run.iterations.x=9"], r"run.iterations.x: run.iterations is not a table; set it as run.iterations="),
        ({}, ["reward.weights.alive=nan"], r"reward.weights.alive = nan: must be a finite number"),
        ({}, ["rewards.weights.alive=1"], r"unknown config key 'rewards' \(did you mean 'reward'"),
        ({"run": 3}, [], "run: expected a table"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(data, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(data, overrides)


def test_missing_or_invalid_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[ppo\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_layout_checks():
    check_layout(1, 1, 8, environ={})  # serial
    check_layout(3, 1, 8, environ={})
    check_layout(4, 2, 8, environ={})
    with pytest.raises(LayoutError, match="no simulator rank"):
        check_layout(2, 2, 8, environ={})
    with pytest.raises(LayoutError, match="cannot feed"):
        check_layout(3, 2, 8, environ={})
    with pytest.raises(LayoutError, match=r"layout.ranks=4 but the MPI world has 3"):
        check_layout(3, 1, 8, expected_ranks=4, environ={})
    with pytest.raises(LayoutError, match=r"srun started 3 tasks.*--mpi=pmi2"):
        check_layout(1, 1, 8, environ={"SLURM_STEP_NUM_TASKS": "3"})
    with pytest.raises(LayoutError, match="envs_per_rank"):
        check_layout(3, 1, 0, environ={})


def test_the_pip_mpich_under_slurms_pmi2_uses_ofi_unless_told_otherwise():
    """(Across nodes: tests/test_slurm.py starts a stage on a dirty heap both ways.)"""
    pmi2 = {"SLURM_MPI_TYPE": "pmi2"}
    assert slurm_pmi2_netmod(pmi2, pip_mpich=True) == "ofi"
    assert slurm_pmi2_netmod({**pmi2, "MPIR_CVAR_CH4_NETMOD": "ucx"}, pip_mpich=True) is None  # the user's choice
    assert slurm_pmi2_netmod(pmi2, pip_mpich=False) is None  # a site MPI is left alone
    assert slurm_pmi2_netmod({"SLURM_MPI_TYPE": "pmix"}, pip_mpich=True) is None
    assert slurm_pmi2_netmod({}, pip_mpich=True) is None  # mpiexec (hydra) reads UCX's cards


def test_checkpoints_are_atomic_safe_and_checked(tmp_path):
    payload = {"meta": {"obs_size": 3}, "iteration": 4, "weights": torch.arange(5.0), "config": {"a": [1, 2]}}
    path = save_checkpoint(tmp_path, payload, 4)
    assert path.name == "iter-000004.pt"
    loaded = load_checkpoint(tmp_path)  # a run directory means its latest checkpoint
    assert loaded["iteration"] == 4 and torch.equal(loaded["weights"], torch.arange(5.0))
    for i in range(5, 10):
        save_checkpoint(tmp_path, {**payload, "iteration": i}, i)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("iter-*")) == [
        "iter-000007.pt",
        "iter-000008.pt",
        "iter-000009.pt",
    ]
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match=r"corrupt.pt: corrupt or not a checkpoint"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an lrun checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_rollout_pack_round_trip():
    rng = np.random.default_rng(0)
    steps, envs, obs, act = 5, 3, 4, 2

    def arr(*shape):
        return rng.normal(size=shape).astype(np.float32)

    shapes = Rollout.step_shapes(steps, envs, obs, act)
    arrays = {name: arr(*shape) for name, shape in shapes.items()}
    arrays["terminated"] = rng.random((steps, envs)) < 0.3
    arrays["truncated"] = rng.random((steps, envs)) < 0.3
    r = Rollout(
        **arrays,
        next_value=arr(envs),
        # return, length, distance, task return, failure, simulated steps, fell
        episodes=np.array([[1.5, 20, 3.25, 1.0, 0.0, 80, 1.0], [2.0, 7, 0.5, 2.0, 1.0, 25, 0.0]]),
        policy_version=17,
        simulate_s=1.25,
        wait_s=0.5,
        sim_steps=57,
        term_sums=np.array([0.5, -2.0, 3.0]),
    )
    packed = r.pack()
    assert packed.dtype == np.float32 and len(packed) == Rollout.size(steps, envs, obs, act, 2, 3)
    back = Rollout.unpack(packed, steps, envs, obs, act, n_terms=3)
    for name in (*Rollout.STEP_ARRAYS, "next_value", "episodes", "term_sums"):
        assert np.array_equal(getattr(back, name), getattr(r, name)), name
    assert (back.policy_version, back.simulate_s, back.wait_s, back.n_sim_steps) == (17, 1.25, 0.5, 57)
    assert back.n_steps == steps * envs  # decisions
    assert np.array_equal(back.episode_column("distance"), [3.25, 0.5])
    with pytest.raises(ValueError, match="does not match"):
        Rollout.unpack(packed, steps, envs, obs + 1, act, n_terms=3)
    # the summary keeps what the log needs and drops the per-step arrays
    summary = r.summary()
    assert summary.n_steps == r.n_steps and summary.n_sim_steps == 57 and summary.obs.size == 0
    assert np.array_equal(summary.episodes, r.episodes) and np.array_equal(summary.term_sums, r.term_sums)
    assert (summary.simulate_s, summary.wait_s, summary.policy_version) == (1.25, 0.5, 17)
    # the simulators' idle share is over their own cycle, never above 1 (even when the learner's iteration was
    # shorter than the update they waited for)
    from lrun.training.report import iteration_scalars

    r.wait_s, r.store_s = 3.0, 0.25
    scalars = iteration_scalars(1, 100, 100, 0.5, 100, 100, 0.1, [r.summary()], {})
    assert scalars["time/simulator_wait_fraction"] == pytest.approx(3.0 / (3.0 + 0.25 + 1.25))


def test_train_config_is_a_dataclass_with_help_everywhere():
    import dataclasses

    config = TrainConfig()
    for section in dataclasses.fields(config):
        for f in dataclasses.fields(getattr(config, section.name)):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no help text"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_logger_writes_csv_and_a_live_bar_on_a_terminal(tmp_path):
    from lrun.logger import ProgressLogger

    scalars = {"iteration": 1, "env_steps": 100, "charts/steps_per_s": 50.0, "losses/entropy": 1.5}
    terminal = FakeTerminal()
    logger = ProgressLogger(tmp_path, total_iterations=2, stream=terminal)
    logger.log(scalars)
    logger.log({**scalars, "iteration": 2, "env_steps": 200})
    assert terminal.getvalue().startswith("\r[##########..........] iter 1/2")
    assert "\r[####################] iter 2/2" in terminal.getvalue() and terminal.getvalue().endswith("\n")
    plain = io.StringIO()  # not a terminal: plain lines, as under Slurm
    (tmp_path / "b").mkdir()
    ProgressLogger(tmp_path / "b", 2, plain).log(scalars)
    assert plain.getvalue().startswith("iter 1/2 | steps 100") and "\r" not in plain.getvalue()
    rows = (tmp_path / "progress.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,env_steps") and len(rows) == 3
    logger.truncate_after(1)
    assert len((tmp_path / "progress.csv").read_text().splitlines()) == 2
    assert "| elapsed 0s, ETA 0s" in plain.getvalue()  # the last iteration: nothing left


def test_the_bar_fits_the_terminal_dropping_the_least_needed_parts_first(tmp_path, monkeypatch):
    import lrun.logger as logger_module

    scalars = {
        "iteration": 7,
        "env_steps": 28672,
        "charts/steps_per_s": 131.0,
        "charts/episodic_return": 41.1,
        "charts/episodic_length": 250.0,
        "charts/episodes": 5,
        "losses/q_loss": 19.9,
        "losses/q_mean": 115.0,
        "losses/alpha": 0.0185,
        "losses/entropy": -18.1,
        "losses/updates": 512,
        "time/simulate_s": 24.6,
        "time/communicate_s": 0.55,
        "time/learn_s": 6.5,
        "time/simulator_wait_fraction": 0.21,
    }
    for columns in (300, 130, 40):
        monkeypatch.setattr(logger_module, "terminal_columns", lambda stream, c=columns: c)
        terminal = FakeTerminal()
        (tmp_path / str(columns)).mkdir()
        logger_module.ProgressLogger(tmp_path / str(columns), 490, stream=terminal).log(scalars)
        shown = terminal.getvalue().removeprefix("\r").removesuffix("\x1b[K")
        assert len(shown) <= columns, shown
        assert shown.startswith("[") and "iter 7/490" in shown
        if columns == 300:
            assert "q 19.9" in shown and "sim idle 21%" in shown  # room for everything
        if columns == 130:  # the timings and the learner went first; the return and the ETA stayed
            assert "sim idle" not in shown and "q 19.9" not in shown and "return 41.1" in shown and "ETA" in shown


def test_a_column_that_appears_later_is_kept_not_dropped(tmp_path):
    """progress.csv's header once came from the first row alone: a later metric (a resumed run of an older lrun,
    a term that starts mid-run) vanished silently."""
    import csv

    from lrun.logger import ProgressLogger

    logger = ProgressLogger(tmp_path, 3, io.StringIO(), progress="lines")
    logger.log({"iteration": 1, "env_steps": 10, "a": 1.0})
    logger.log({"iteration": 2, "env_steps": 20, "a": 2.0, "b": 5.0})
    # a new logger on the same file (a resume) keeps the wider header and can widen it again
    ProgressLogger(tmp_path, 3, io.StringIO(), progress="lines").log({"iteration": 3, "env_steps": 30, "c": 7.0})
    with open(tmp_path / "progress.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["iteration", "env_steps", "a", "b", "c"]
    assert [r["b"] for r in rows] == ["", "5.0", ""] and [r["c"] for r in rows] == ["", "", "7.0"]
    assert [r["a"] for r in rows] == ["1.0", "2.0", ""]


def test_progress_lines_carry_elapsed_time_and_an_eta(tmp_path, monkeypatch):
    import lrun.logger as logger_module

    clock = iter([100.0, 160.0, 220.0])  # created at 100 s, then one iteration a minute
    monkeypatch.setattr(logger_module.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    logger = logger_module.ProgressLogger(tmp_path, 10, out, progress="lines")
    logger.log({"iteration": 1, "env_steps": 1})
    logger.log({"iteration": 2, "env_steps": 2})
    first, second = out.getvalue().splitlines()
    assert first.endswith("| elapsed 1m00s, ETA 9m00s") and second.endswith("| elapsed 2m00s, ETA 8m00s")
    with pytest.raises(ValueError, match="progress must be one of auto, bar, lines"):
        logger_module.ProgressLogger(tmp_path, 10, out, progress="fancy")


def test_asking_for_a_bar_without_a_terminal_says_so_and_prints_lines(tmp_path):
    from lrun.logger import ProgressLogger

    out = io.StringIO()
    ProgressLogger(tmp_path, 2, out, progress="bar").log({"iteration": 1, "env_steps": 1})
    note, line = out.getvalue().splitlines()
    assert "no terminal reachable" in note and line.startswith("iter 1/2")


def test_every_shipped_config_and_curriculum_loads():
    """A recipe or stage under experiments/ that no longer parses (a renamed key) fails here, not in a user's run."""
    from helpers import EXPERIMENTS

    from lrun.curriculum import load_curriculum

    files = sorted(EXPERIMENTS.rglob("*.toml"))
    assert len(files) > 10
    for path in files:
        if "[[stage]]" in path.read_text():
            curriculum = load_curriculum(path)
            assert curriculum.stages, path
        else:
            assert load_config(path, []).run.iterations > 0, path
