"""The scaling model (lrun.scaling) and `lrun bench scaling`, which measures its inputs on lrun/Sleep-v0."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import pytest
import torch
from helpers import LRUN, MPIEXEC, clean_env

from lrun.scaling import Machine, Workload, learners_for, predict, simulators_per_learner

WORK = Workload(
    envs_per_rank=8,
    steps_per_env=128,
    epochs=10,
    minibatches=8,
    parameters=15_000,
    rollout_bytes=266_000,
    message_bytes=120_000,
    moments_bytes=664,
)
CLUSTER = Machine(step_s=0.003, learn_s_per_sample=2e-5, latency_s=2e-6, bandwidth_Bps=12e9, poll_s=0.002)


def test_the_iteration_is_the_sum_of_its_terms_and_the_idle_shares_add_up():
    p = predict(64, 2, WORK, CLUSTER)
    terms = ("simulate_s", "transfer_s", "moments_s", "learn_s", "bcast_s")
    assert p["iteration_s"] == pytest.approx(sum(p[t] for t in terms))
    assert p["steps_per_s"] == pytest.approx(62 * 8 * 128 / p["iteration_s"])
    assert p["simulator_idle"] + p["learner_idle"] == pytest.approx(1.0)
    assert predict(64, 1, WORK, CLUSTER)["gradient_allreduce_s"] == 0 < p["gradient_allreduce_s"]
    ideal = Machine(0.003, 0.0, 0.0, float("inf"))  # free learning and communication: no one waits
    assert predict(1024, 1, WORK, ideal)["simulator_idle"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="need at least one simulator"):
        predict(2, 2, WORK, CLUSTER)


def test_one_learner_keeps_up_until_its_work_equals_the_simulation():
    limit = simulators_per_learner(WORK, CLUSTER)
    sims = round(limit)
    p = predict(sims + 1, 1, WORK, CLUSTER)
    learner_work = p["learn_s"] + p["transfer_s"]
    assert learner_work == pytest.approx(p["simulate_s"], rel=0.05)  # the definition, to rounding of S
    assert learners_for(sims, WORK, CLUSTER) == 1 and learners_for(10 * sims, WORK, CLUSTER) >= 9
    more = [predict(1024, n, WORK, CLUSTER)["steps_per_s"] for n in (1, 4, learners_for(1024, WORK, CLUSTER))]
    assert more[0] < more[1] < more[2]  # at 1024 ranks one learner is the bottleneck; more learners help


SAC_WORK = Workload(
    envs_per_rank=8,
    steps_per_env=64,
    epochs=0,
    minibatches=0,
    parameters=24_000,
    rollout_bytes=140_000,
    message_bytes=200_000,
    moments_bytes=664,
    algorithm="sac",
    frame_skip=4,
    updates_per_step=0.5,
    critic_parameters=50_000,
)
SAC_CLUSTER = Machine(step_s=0.010, learn_s_per_sample=0.0, latency_s=2e-6, bandwidth_Bps=12e9, update_s=0.012)


def test_sac_learners_work_grows_with_the_data_and_overlap_hides_it():
    sync = predict(3, 1, SAC_WORK, SAC_CLUSTER)
    updates = round(0.5 * 8 * 64 * 2)  # u x decisions of the learner's two simulators
    assert sync["learn_s"] == pytest.approx(updates * 0.012)
    assert sync["iteration_s"] == pytest.approx(
        sum(sync[t] for t in ("simulate_s", "transfer_s", "moments_s", "learn_s", "bcast_s"))
    )
    assert sync["steps_per_s"] == pytest.approx(2 * 8 * 64 * 4 / sync["iteration_s"])  # env steps, frame skip 4
    overlapped = predict(3, 1, Workload(**{**SAC_WORK.__dict__, "overlap": True}), SAC_CLUSTER)
    assert overlapped["iteration_s"] == pytest.approx(
        max(overlapped["simulate_s"], overlapped["transfer_s"] + overlapped["learn_s"])
        + overlapped["moments_s"]
        + overlapped["bcast_s"]
    )
    assert overlapped["steps_per_s"] > sync["steps_per_s"]
    # one SAC learner keeps up with t_step / (u t_update) simulators: 0.010 / (0.5 x 0.012) = 1.67
    assert simulators_per_learner(SAC_WORK, SAC_CLUSTER) == pytest.approx(1.0 / 0.6, rel=0.01)
    one = Workload(**{**SAC_WORK.__dict__, "overlap": True})
    assert predict(2, 1, one, SAC_CLUSTER)["simulator_idle"] < 0.01  # one simulator: the learner keeps up
    assert predict(17, 1, one, SAC_CLUSTER)["simulator_idle"] > 0.8  # 16: the learner is the bottleneck
    # several learners share the simulators: each takes 1/L of the steps, plus two gradient Allreduces per step
    two = predict(17, 8, one, SAC_CLUSTER)
    assert two["gradient_allreduce_s"] > 0 and two["steps_per_s"] > 4 * predict(17, 1, one, SAC_CLUSTER)["steps_per_s"]


def test_a_sac_recipe_s_workload_names_its_critics_updates_and_frame_skip():
    from helpers import EXPERIMENTS

    from lrun.bench_scaling import workload
    from lrun.config import load_config

    work = workload(load_config(str(EXPERIMENTS / "recipes" / "walk-sac.toml"), ["sac.overlap=true"]))
    assert (work.algorithm, work.frame_skip, work.updates_per_step, work.overlap) == ("sac", 4, 0.5, True)
    # twin critics 2 x (56 -> 128 -> 128 -> 1) on 38 features + 18 actions
    assert work.critic_parameters == 2 * ((56 * 128 + 128) + (128 * 128 + 128) + (128 + 1))
    assert work.parameters > 0 and work.rollout_bytes > 0


def test_fewer_larger_sac_steps_save_only_the_step_s_fixed_part():
    from lrun.scaling import fit_update_cost, sac_layouts

    sizes = [64, 256, 1024]
    assert fit_update_cost(sizes, [0.005 + 20e-6 * b for b in sizes]) == pytest.approx((0.005, 20e-6))
    costs = {b: 0.005 + 20e-6 * b for b in sizes}
    rows = sac_layouts(SAC_WORK, SAC_CLUSTER, 256, costs, (64, 1024))
    assert [r["batch_size"] for r in rows] == sizes
    assert all(r["updates_per_step"] * r["batch_size"] == pytest.approx(0.5 * 256) for r in rows)  # same samples
    served = [r["simulators_per_learner"] for r in rows]
    assert served[0] < served[1] < served[2]
    assert served[1] == pytest.approx(simulators_per_learner(SAC_WORK, replace(SAC_CLUSTER, update_s=costs[256])))
    assert rows[2]["learners_1024"] < rows[1]["learners_1024"] and rows[2]["steps_per_s_1024"] > 0
    # a step with no fixed part costs the same per sample at any size: no layout serves more simulators
    flat = sac_layouts(SAC_WORK, SAC_CLUSTER, 256, {b: 20e-6 * b for b in sizes}, (64,))
    assert [r["simulators_per_learner"] for r in flat] == pytest.approx([flat[0]["simulators_per_learner"]] * 3)


def test_a_sac_gradient_step_is_timed_at_each_minibatch_size():
    from helpers import EXPERIMENTS, ROOT

    from lrun.bench_scaling import update_costs
    from lrun.config import load_config

    config = load_config(str(EXPERIMENTS / "recipes" / "walk-sac.toml"), ["sac.batch_size=48"])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        costs = update_costs(config, (16, 128), seconds_each=0.05)
        assert torch.get_num_threads() == 2  # timed on one thread (a learner's), then given back
    finally:
        torch.set_num_threads(threads)
    assert sorted(costs) == [16, 48, 128] and all(0 < t < 5 for t in costs.values())
    # a blend stage's step includes the frozen network and the distillation term
    stage = load_config(
        str(EXPERIMENTS / "stages" / "obstacles-sac.toml"), [f"blend.source={ROOT / 'models' / 'walk'}"]
    )
    blended = update_costs(stage, (), seconds_each=0.05)
    assert list(blended) == [stage.sac.batch_size] and blended[stage.sac.batch_size] > 0
    # and onto relative-v2: the relative-v1 walker carried with zero weight on the new inputs, as a run carries it
    stage_v2 = load_config(
        str(EXPERIMENTS / "stages" / "obstacles-sac.toml"),
        [f"blend.source={ROOT / 'models' / 'walk'}", "policy.features=relative-v2"],
    )
    assert list(update_costs(stage_v2, (), seconds_each=0.05)) == [stage.sac.batch_size]


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_bench_scaling_measures_worlds_checks_the_model_and_predicts_a_cluster(tmp_path):
    out = tmp_path / "scaling"
    small = ["--set", "layout.envs_per_rank=2", "--set", "ppo.steps_per_env=32", "--set", "ppo.epochs=2"]
    command = [LRUN, "bench", "scaling", "--worlds", "3:1,4:1", "--iterations", "3", "--out", str(out), *small]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=clean_env())
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((out / "scaling.json").read_text())
    assert [(p["ranks"], p["learners"]) for p in figures["measured"]] == [(3, 1), (4, 1)]
    for point in figures["measured"]:
        assert point["steps_per_s"] > 0 and point["time/mpi_bcast_s"] > 0 and point["model"]["steps_per_s"] > 0
        assert point["steps_per_iteration"] == (point["ranks"] - 1) * 2 * 32
    assert figures["workload"]["rollout_bytes"] > 4 * 2 * 32 * (41 + 18)  # at least the observations and actions
    assert {p["ranks"] for p in figures["predicted"]} == {64, 256, 1024}
    assert (out / "scaling.png").stat().st_size > 10_000 and "predicted on a cluster" in result.stdout
    bad = subprocess.run([LRUN, "bench", "scaling", "--worlds", "2:2"], capture_output=True, text=True, env=clean_env())
    assert bad.returncode == 2 and "RANKS:LEARNERS" in bad.stderr
