"""The training package's seams, without MPI processes or OpenSim: the algorithm registry and what each
algorithm logs, the key that moved (`ppo.steps_per_env` -> `layout.steps_per_env`), the run-directory reader of
progress.csv, and the import graph (no cycles; the env imports nothing above it)."""

from __future__ import annotations

import ast
import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest

from lrun.config import RANGES, ConfigError, build_config, describe_keys, upgrade_keys
from lrun.logger import ProgressLogger
from lrun.progress import load_progress, smooth
from lrun.rollout import Rollout
from lrun.training.loop import ALGORITHMS
from lrun.training.ppo import PPO
from lrun.training.report import iteration_scalars
from lrun.training.sac import SAC

LRUN = Path(__file__).resolve().parent.parent / "lrun"


def test_every_registered_algorithm_is_a_config_choice_and_logs_only_its_own_losses():
    assert set(ALGORITHMS) == {"ppo", "sac"}
    accepts, _ = RANGES["run.algorithm"]
    assert all(accepts(name) and ALGORITHMS[name].name == name for name in ALGORITHMS)
    steps, envs = 4, 2
    rollout = Rollout(
        *(np.zeros((steps, envs, *shape)) for shape in ((3,), (1,), (), (), (), (), (), ())),
        next_value=np.zeros(envs),
        simulate_s=1.0,
    )
    losses = {"pg_loss": 0.5, "q_loss": 2.0, "entropy": 1.0, "learning_rate": 3e-4}

    def logged(algorithm) -> dict[str, float]:
        return iteration_scalars(1, 8, 8, 1.0, 8, 8, 0.1, [rollout], losses, (), algorithm.scalars)

    ppo, sac = logged(PPO), logged(SAC)
    assert ppo["losses/policy_loss"] == 0.5 and "losses/q_loss" not in ppo
    assert sac["losses/q_loss"] == 2.0 and "losses/policy_loss" not in sac and "losses/value_loss" not in sac
    assert math.isnan(sac["losses/alpha"])  # named by SAC, not reported this iteration (before its first update)
    for scalars in (ppo, sac):  # the losses sit between the episode charts and the times, as they always did
        keys = list(scalars)
        assert keys.index("charts/distance") < keys.index("losses/entropy") < keys.index("time/iteration_s")
        assert scalars["charts/learning_rate"] == 3e-4


def test_the_rollout_length_moved_to_layout_and_the_old_key_still_works_with_a_note():
    config = build_config({"ppo": {"steps_per_env": 32, "epochs": 2}})
    assert config.layout.steps_per_env == 32 and config.ppo.epochs == 2
    assert config.notes == ["note: ppo.steps_per_env is now layout.steps_per_env (the old name still works)"]
    assert "steps_per_env" not in config.to_dict()["ppo"] and build_config(config.to_dict()).notes == []
    # an override under either name overrides the file's value under the other
    assert build_config({"ppo": {"steps_per_env": 32}}, ["layout.steps_per_env=8"]).layout.steps_per_env == 8
    overridden = build_config({"layout": {"steps_per_env": 32}}, ["ppo.steps_per_env=16", "ppo.steps_per_env=8"])
    assert overridden.layout.steps_per_env == 8 and len(overridden.notes) == 1
    with pytest.raises(ConfigError, match=r"ppo\.steps_per_env is the old name of layout\.steps_per_env"):
        build_config({"ppo": {"steps_per_env": 32}, "layout": {"steps_per_env": 16}})
    assert build_config({"ppo": {"steps_per_env": 16}, "layout": {"steps_per_env": 16}}).layout.steps_per_env == 16
    with pytest.raises(ConfigError, match=r"layout\.steps_per_env = 0: must be >= 1"):
        build_config({"ppo": {"steps_per_env": 0}})
    # a checkpoint's config of an older lrun, compared under the new names (lrun bench learn, lrun compare)
    old = {"ppo": {"steps_per_env": 64, "gamma": 0.9}, "layout": {"learners": 1}}
    assert upgrade_keys(old)[0] == {"ppo": {"gamma": 0.9}, "layout": {"learners": 1, "steps_per_env": 64}}
    assert old["ppo"]["steps_per_env"] == 64  # the caller's dict is left alone
    assert "steps_per_env (int, default 128)" in describe_keys().split("[policy]")[0].split("[layout]")[1]


def test_one_reader_for_progress_csv_widened_header_empty_cells_and_all(tmp_path):
    logger = ProgressLogger(tmp_path, total_iterations=3, stream=io.StringIO())
    logger.log({"iteration": 1, "env_steps": 100, "charts/distance": float("nan")})
    logger.log({"iteration": 2, "env_steps": 200, "charts/distance": 1.5, "losses/q_loss": 0.25})  # widens
    logger.log({"iteration": 3, "env_steps": 300})  # a column it does not log this time: an empty cell
    logger.close()
    progress = load_progress(tmp_path)
    assert len(progress) == 3 and list(progress.columns)[:2] == ["iteration", "env_steps"]
    assert np.array_equal(progress["env_steps"], [100, 200, 300])
    assert np.isnan(progress["losses/q_loss"][[0, 2]]).all() and progress["losses/q_loss"][1] == 0.25
    assert np.isnan(progress["charts/distance"][0]) and "losses/policy_loss" not in progress
    assert np.isnan(progress.get("losses/policy_loss")).all() and len(progress.get("losses/policy_loss")) == 3
    with pytest.raises(KeyError):
        progress["losses/policy_loss"]
    assert progress.rows()[1]["charts/distance"] == 1.5 and progress.by_iteration()[3]["env_steps"] == 300
    with open(tmp_path / "progress.csv", newline="") as handle:  # what csv.DictReader gives, as floats
        assert [float(r["env_steps"]) for r in csv.DictReader(handle)] == list(progress["env_steps"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "progress.csv").write_text("")
    assert len(load_progress(tmp_path / "empty")) == 0
    with pytest.raises(FileNotFoundError):
        load_progress(tmp_path / "nothing")
    y = np.array([1.0, np.nan, 3.0, 5.0])
    assert np.allclose(smooth(y, 2), [1.0, 1.0, 3.0, 4.0])
    assert np.isnan(smooth(np.array([np.nan, 2.0]), 1)[0])


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The lrun modules a file imports (at module level or inside functions; not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for sub in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            }
    return found & modules


def test_the_import_graph_has_no_cycle_and_the_env_imports_nothing_above_it():
    paths = {}
    for path in LRUN.rglob("*.py"):
        parts = path.relative_to(LRUN.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    # a module's own packages are imported before it anyway: importing a name from one is no edge of the graph
    imports = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    graph = {name: {m for m in found if not name.startswith(f"{m}.")} for name, found in imports.items()}
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in chain:
            raise AssertionError(f"import cycle: {' -> '.join((*chain[chain.index(name) :], name))}")
        if name in done:
            return
        for other in graph[name]:
            visit(other, (*chain, name))
        done.add(name)

    for name in graph:
        visit(name, ())
    for name, imported in graph.items():
        if name.startswith("lrun.env"):  # the env draws its own frames: no analysis (h5py), no training above it
            assert not {m for m in imported if m.startswith(("lrun.analysis", "lrun.training", "lrun.store"))}, name
        if name.startswith("lrun.training."):  # the package's __init__ loads the loop: nothing in it needs that
            assert "lrun.training" not in imports[name], f"{name} imports its package's __init__"
