"""A model of one synchronous training iteration on R ranks: what it costs, where it waits, and when one learner
stops keeping up (maths only: no MPI, no OpenSim). `lrun bench scaling` measures its inputs and checks it.

One iteration, as `lrun train` runs it (PPO; the README states the assumptions):

    T_sim      = N E t_step                            every simulator steps its E envs N times, in parallel
    T_transfer = (S/L) (a + b_rollout / B)             a learner takes its S/L simulators' rollouts one by one
    T_moments  = 2 ceil(log2 R) (a + b_moments / B + p)  the observation moments' Allreduce
    T_learn    = K (S/L) N E c + K M T_grad(L)         K epochs over the learner's samples, M minibatches each
    T_grad(L)  = 2 ceil(log2 L) a + 2 (L-1)/L 4P / B   the gradient Allreduce among learners (0 for L = 1)
    T_bcast    = ceil(log2 R) (a + b_message / B + p)  the decision and the new policy to every rank
    T_iter     = T_sim + T_transfer + T_moments + T_learn + T_bcast

with a the latency and B the bandwidth of a rank's link, c the learner's seconds per sample per epoch, P the
policy's parameters, and p what lrun's polite waiting adds to each stage of a tree collective: a waiting rank
sleeps between tests of its request (`run.wait_sleep`, so that it leaves its core to the ranks that work), and
without an asynchronous progress thread the MPI library advances a collective only inside those tests, so each
stage can wait up to one sleep. (The rollouts' receive and the gradient Allreduce block instead: no p.)

Simulated steps per second are S N E / T_iter; the simulators wait 1 - T_sim / T_iter of
each iteration, the learners T_sim / T_iter. A learner keeps up while its own work (transfer and update)
takes no longer than the simulation: at most T_sim / (K N E c + a + b_rollout / B) simulators each.

SAC's iteration (`Workload.algorithm = "sac"`) differs in the learner's work, which grows with the data rather
than with epochs: each learner takes U = round(u N E S / L) gradient steps (u = `sac.updates_per_step`
per decision), each costing t_update (critic, actor and temperature at one minibatch) plus, with several
learners, two gradient Allreduces (the critics' and the actor's):

    T_learn    = U (t_update + T_grad,critic(L) + T_grad,actor(L))
    T_iter     = T_sim + T_transfer + T_moments + T_learn + T_bcast          synchronous (`sac.overlap = false`)
    T_iter     = max(T_sim, T_transfer + T_learn) + T_moments + T_bcast      overlapped: the simulators collect
                                                                            the next iteration while the learner
                                                                            updates (policy one iteration behind)

Here N counts decisions (each `frame_skip` env steps), t_step is a decision's wall time, and steps/s counts env
steps (S N E frame_skip / T_iter). A SAC learner keeps up with t_step / (u t_update) simulators (the transfer
is negligible beside it); several learners each serve their share, but they average their gradients, so the
run takes 1/L as many sequential gradient steps per decision, each on L minibatches: throughput bought with
fewer, larger steps (the learning curve per env step must be checked, not assumed).

A SAC learner's gradient step costs a fixed part (kernel launches, autograd and optimiser bookkeeping for a
few small layers) plus a part per sample, t_update(b) = t_0 + t_1 b, so at small minibatches most of its time is
the fixed part. `sac_layouts` compares ways to spend the same learning per decision (u b samples of gradient
per decision, the replay ratio) with fewer, larger steps: u' = u b / b' at minibatch b'. On the learner's side
this is the same trade as L learners averaging L minibatches of b (L b samples per sequential step), but one
learner takes it on one core.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Machine:
    """What the model needs to know about the hardware: step time, learner speed, link latency and bandwidth."""

    step_s: float  # wall seconds of one env step on a simulator (physics + the policy's forward pass)
    learn_s_per_sample: float  # learner seconds per sample per epoch (forward, backward, optimiser share)
    latency_s: float  # a: one message's latency
    bandwidth_Bps: float  # B: bytes per second of one rank's link
    poll_s: float = 0.0  # p: polite waiting's cost per stage of a tree collective (about run.wait_sleep)
    update_s: float = 0.0  # SAC: learner seconds of one gradient step (critic, actor, temperature; one minibatch)


@dataclass(frozen=True)
class Workload:
    """The iteration's shape: envs per rank, steps per env, PPO epochs and minibatches, message sizes."""

    envs_per_rank: int
    steps_per_env: int
    epochs: int
    minibatches: int
    parameters: int  # trainable parameters of the policy (gradient Allreduce: 4 bytes each)
    rollout_bytes: int  # one simulator's packed rollout (float32)
    message_bytes: int  # the broadcast: decision, parameters, normaliser (float64)
    moments_bytes: int  # the observation moments (float64)
    algorithm: str = "ppo"  # "sac": the learner's work is U gradient steps (below), not K epochs
    frame_skip: int = 1  # env steps per decision (steps/s counts env steps)
    updates_per_step: float = 0.0  # SAC: u, gradient steps per decision (sac.updates_per_step)
    critic_parameters: int = 0  # SAC: the twin critics' parameters (their gradient Allreduce)
    overlap: bool = False  # SAC: the simulators collect while the learner updates (sac.overlap)

    @property
    def samples_per_simulator(self) -> int:
        """Agent steps one simulator contributes per iteration."""
        return self.envs_per_rank * self.steps_per_env


def tree_stages(n: int) -> int:
    """Stages of a tree collective over `n` ranks: ceil(log2 n)."""
    return math.ceil(math.log2(n)) if n > 1 else 0


def allreduce_s(learners: int, parameters: int, machine: Machine) -> float:
    """One gradient Allreduce of `parameters` float32 values among `learners` learners (0 for one)."""
    if learners < 2:
        return 0.0
    a, bw = machine.latency_s, machine.bandwidth_Bps
    return 2 * tree_stages(learners) * a + 2 * (learners - 1) / learners * 4 * parameters / bw


def sac_updates(sims: int, learners: int, work: Workload) -> int:
    """Gradient steps each SAC learner takes per iteration (as `lrun.training.sac` counts them)."""
    return max(round(work.updates_per_step * work.samples_per_simulator * sims / learners), 1)


def predict(ranks: int, learners: int, work: Workload, machine: Machine) -> dict[str, float]:
    """The model's iteration at `ranks` ranks with `learners` learners: each term (seconds), steps/s, idle shares."""
    if learners < 1 or ranks <= learners:
        raise ValueError(f"need at least one simulator: {ranks} ranks, {learners} learners")
    sims = ranks - learners
    per_learner = sims / learners
    a, bw = machine.latency_s, machine.bandwidth_Bps
    simulate = work.samples_per_simulator * machine.step_s
    transfer = per_learner * (a + work.rollout_bytes / bw)
    p = machine.poll_s
    moments = 2 * tree_stages(ranks) * (a + work.moments_bytes / bw + p)
    bcast = tree_stages(ranks) * (a + work.message_bytes / bw + p)
    if work.algorithm == "sac":
        updates = sac_updates(sims, learners, work)
        gradient = allreduce_s(learners, work.critic_parameters, machine) + allreduce_s(
            learners, work.parameters, machine
        )
        learn = updates * (machine.update_s + gradient)
        gradient_total = updates * gradient
        if work.overlap:
            iteration = max(simulate, transfer + learn) + moments + bcast
        else:
            iteration = simulate + transfer + moments + learn + bcast
        learner_idle = 1.0 - (transfer + learn) / iteration
    else:
        gradient = allreduce_s(learners, work.parameters, machine)  # the gradient Allreduce among learners
        learn = work.epochs * per_learner * work.samples_per_simulator * machine.learn_s_per_sample
        gradient_total = work.epochs * work.minibatches * gradient
        learn += gradient_total
        iteration = simulate + transfer + moments + learn + bcast
        learner_idle = simulate / iteration
    return {
        "ranks": ranks,
        "learners": learners,
        "simulators": sims,
        "simulate_s": simulate,
        "transfer_s": transfer,
        "moments_s": moments,
        "learn_s": learn,
        "gradient_allreduce_s": gradient_total,
        "bcast_s": bcast,
        "iteration_s": iteration,
        "steps_per_s": sims * work.samples_per_simulator * work.frame_skip / iteration,
        "simulator_idle": 1.0 - simulate / iteration,
        "learner_idle": learner_idle,
    }


def simulators_per_learner(work: Workload, machine: Machine) -> float:
    """The most simulators one learner serves before its own work outlasts the simulation (simulators then
    wait more than half of every iteration; overlapped SAC, any wait at all): raise `layout.learners` beyond
    this."""
    if work.algorithm == "sac":
        per_simulator = work.updates_per_step * work.samples_per_simulator * machine.update_s
    else:
        per_simulator = work.epochs * work.samples_per_simulator * machine.learn_s_per_sample
    per_simulator += machine.latency_s + work.rollout_bytes / machine.bandwidth_Bps
    return work.samples_per_simulator * machine.step_s / per_simulator


def learners_for(ranks: int, work: Workload, machine: Machine) -> int:
    """The fewest learners that keep up with the simulators of `ranks` ranks."""
    limit = simulators_per_learner(work, machine)
    learners = 1
    while learners < ranks - 1 and (ranks - learners) / learners > limit:
        learners += 1
    return learners


def as_dict(thing: Machine | Workload) -> dict:
    """The model's inputs as a plain dict (JSON)."""
    return asdict(thing)


def fit_update_cost(batch_sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least-squares (t_0, t_1) of t_update(b) = t_0 + t_1 b through measured gradient-step times."""
    if len(batch_sizes) < 2 or len(seconds) != len(batch_sizes):
        raise ValueError("need at least two (batch size, seconds) measurements")
    slope, intercept = np.polyfit(batch_sizes, seconds, 1)
    return float(intercept), float(slope)


def sac_layouts(
    work: Workload, machine: Machine, batch_size: int, costs: dict[int, float], ranks: tuple[int, ...]
) -> list[dict[str, float]]:
    """For each measured minibatch size b' (`costs`: b' -> seconds of one gradient step), the SAC learner that
    keeps the recipe's samples per decision (u b) with u' = u b / b' steps per decision: its step cost, how many
    simulators one learner serves, and the cluster at each of `ranks` with enough learners."""
    samples_per_decision = work.updates_per_step * batch_size
    rows = []
    for size, seconds in sorted(costs.items()):
        w = replace(work, updates_per_step=samples_per_decision / size)
        m = replace(machine, update_s=seconds)
        row: dict[str, float] = {
            "batch_size": size,
            "updates_per_step": w.updates_per_step,
            "update_s": seconds,
            "update_s_per_sample": seconds / size,
            "simulators_per_learner": simulators_per_learner(w, m),
        }
        for r in ranks:
            learners = learners_for(r, w, m)
            row[f"learners_{r}"] = learners
            row[f"steps_per_s_{r}"] = predict(r, learners, w, m)["steps_per_s"]
        rows.append(row)
    return rows
