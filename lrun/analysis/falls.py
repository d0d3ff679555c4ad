"""Where episodes end short: falls at obstacles or on open ground, stops in front of obstacles, weak muscles.

Maths over an evaluation's (or any run's) episode table, numpy only. An obstacle is *met* once the pelvis
reaches NEAR_BEFORE_M in front of its centre; a fall is put down to the obstacle whose centre lies from
NEAR_BEFORE_M ahead of the pelvis to NEAR_AFTER_M behind it when the pelvis drops (the pelvis trails the
feet: a toe caught on an obstacle brings it down about a stride later; measured on models/round2's 82 round-2
falls, the nearest obstacle's centre lay from 0.5 m ahead to 0.8 m behind the pelvis for 80 % of them). Each
met obstacle is one trial, so the fall rate per obstacle met, by radius, says which obstacles the policy
cannot clear.

With the episodes' steps (an evaluation's store), `approach_breakdown` says what the policy could see when a
foot met an obstacle: the task's observation shows the next obstacle only until the pelvis passes it, so a
trailing foot meets obstacles already out of view, and of the first three (drawn within 1-5 m) one can hide
behind another.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from lrun.analysis.common import save_figure, wilson_interval
from lrun.env.features import OBSTACLE, PELVIS_X, point

NEAR_BEFORE_M = 0.6
NEAR_AFTER_M = 1.0
#: An episode that did not fall but ended under this share of the median distance of those that did not fall
#: has stopped short; it stopped in front of an obstacle when one's centre lies at most STOP_AHEAD_M ahead.
SHORT_SHARE = 0.5
STOP_AHEAD_M = 1.0
RADIUS_EDGES = (0.10, 0.15, 0.20)
#: A toe or heel point this close to an obstacle's surface: the foot meets it (the foot's contact spheres are a
#: few centimetres; a decision's step moves a swinging foot ~5-10 cm, so a closer mark would miss passes).
APPROACH_M = 0.06
FEET = (("toes_l", "talus_l"), ("toes_r", "talus_r"))  # each foot's points in the observation
#: What the observation showed when a foot met an obstacle: that obstacle, nothing of it (the pelvis had passed
#: it), or a nearer one in front of it.
VIEWS = ("in_view", "passed", "hidden")
#: Two x's of one obstacle (observed as pelvis x + offset, stored as float32) agree this closely.
SAME_X_M = 1e-3
STRENGTH_EDGES = (0.8, 0.9, 1.0)
#: Unused obstacle slots are NaN in the store; the 2017 layout parks them with a radius of 1e-4.
REAL_RADIUS_M = 1e-3


def _bins(edges: tuple[float, ...]) -> list[tuple[float | None, float | None]]:
    """Half-open bins [lo, hi) from edges, open at both ends (None)."""
    bounds: list[float | None] = [None, *edges, None]
    return list(pairwise(bounds))


def _in_bin(values: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    mask = np.ones(values.shape, dtype=bool)
    if lo is not None:
        mask &= values >= lo
    if hi is not None:
        mask &= values < hi
    return mask


def _rate(falls: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(falls, n)
    return {"n": n, "falls": falls, "fall_rate": falls / n if n else None, "ci95": [low, high] if n else None}


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def falls_breakdown(
    distance: np.ndarray, fell: np.ndarray, obstacles: np.ndarray, strengths: np.ndarray | None = None
) -> dict[str, Any]:
    """Falls at obstacles and on open ground, the fall rate per obstacle met by radius, the episodes that
    stopped short (and in front of what), and the fall rate by the weaker of difficulty 2's two strengths.

    distance (M,): final pelvis x; fell (M,): 1 for a fall; obstacles (M, W, 3): absolute x, y, radius rows,
    NaN-padded; strengths (M, 2): the two muscle strengths (None or all 1: not reported)."""
    distance = np.asarray(distance, dtype=np.float64)
    fell = np.asarray(fell).astype(bool)
    obstacles = np.asarray(obstacles, dtype=np.float64).reshape(len(distance), -1, 3)
    x, radius = obstacles[..., 0], obstacles[..., 2]
    with np.errstate(invalid="ignore"):
        real = np.isfinite(x) & (np.nan_to_num(radius) > REAL_RADIUS_M)
        met = real & (distance[:, None] >= x - NEAR_BEFORE_M)
        ahead = x - distance[:, None]  # the obstacle's centre ahead of the final pelvis (negative: behind)
        near = met & (ahead <= NEAR_BEFORE_M) & (ahead >= -NEAR_AFTER_M)
    # the fall's obstacle: of those near the fall point, the one whose centre is nearest it
    cause = np.where(near, np.abs(ahead), np.inf).argmin(axis=1)
    at_obstacle = fell & near.any(axis=1)
    caused = np.zeros_like(met)
    caused[np.flatnonzero(at_obstacle), cause[at_obstacle]] = True

    by_radius = []
    for lo, hi in _bins(RADIUS_EDGES):
        in_bin = met & _in_bin(np.nan_to_num(radius), lo, hi)
        by_radius.append({"radius_m": [lo, hi], **_rate(int(caused[in_bin].sum()), int(in_bin.sum()))})

    short = ~fell & (distance < SHORT_SHARE * np.median(distance[~fell])) if (~fell).any() else np.zeros_like(fell)
    stop_ahead = real & (ahead >= 0) & (ahead <= STOP_AHEAD_M)
    stopped_before = short & stop_ahead.any(axis=1)
    first_ahead = np.where(stop_ahead, ahead, np.inf).argmin(axis=1)
    result: dict[str, Any] = {
        "episodes": len(distance),
        "falls": int(fell.sum()),
        "near_m": {"before": NEAR_BEFORE_M, "after": NEAR_AFTER_M},
        "falls_at_obstacle": int(at_obstacle.sum()),
        "falls_on_open_ground": int((fell & ~at_obstacle).sum()),
        "fall_obstacle_radius_median_m": _median(radius[caused]),
        "met_obstacle_radius_median_m": _median(radius[met]),
        "obstacles": int(real.sum()),
        "obstacles_met": int(met.sum()),
        "by_radius": by_radius,
        "short": {
            "episodes": int(short.sum()),
            "before_obstacle": int(stopped_before.sum()),
            "obstacle_radius_median_m": _median(radius[np.flatnonzero(stopped_before), first_ahead[stopped_before]]),
        },
    }
    if strengths is not None and not np.allclose(strengths, 1.0):
        weaker = np.asarray(strengths, dtype=np.float64).min(axis=1)
        result["by_strength"] = [
            {"strength": [lo, hi], **_rate(int(fell[m].sum()), int(m.sum()))}
            for lo, hi in _bins(STRENGTH_EDGES)
            for m in [_in_bin(weaker, lo, hi)]
        ]
    return result


def foot_approaches(obs: np.ndarray, obstacles: np.ndarray) -> list[tuple[int, int, str]]:
    """Each foot's first meeting with each obstacle in one episode: (step, obstacle index, view) in step order
    (a leading and a trailing foot meet an obstacle one after the other).

    obs (T, 41): the episode's task observations in order; obstacles (W, 3): absolute x, y, radius rows
    (NaN-padded). The view is read from the observation at that step (VIEWS)."""
    obs = np.asarray(obs, dtype=np.float64)
    events = []
    for j, (x, y, r) in enumerate(np.asarray(obstacles, dtype=np.float64).reshape(-1, 3)):
        if not np.isfinite(x) or r <= REAL_RADIUS_M:
            continue
        for foot in FEET:
            near = np.zeros(len(obs), dtype=bool)
            for name in foot:
                ix, iy = point(name)
                near |= np.hypot(obs[:, ix] - x, obs[:, iy] - y) - r < APPROACH_M
            if not near.any():
                continue
            t = int(np.argmax(near))
            pelvis = obs[t, PELVIS_X]
            if obs[t, OBSTACLE[2]] > REAL_RADIUS_M and abs(pelvis + obs[t, OBSTACLE[0]] - x) < SAME_X_M:
                view = "in_view"
            else:
                view = "passed" if x + r < pelvis else "hidden"
            events.append((t, j, view))
    return sorted(events)


def approach_breakdown(episodes: Any) -> dict[str, Any]:
    """What the policy saw when its feet met obstacles, over episodes given as (obs (T, 41), obstacles (W, 3),
    fell) triples: every first meeting by view, and each fall at an obstacle by the view of the last meeting
    before it (one within NEAR_AFTER_M behind the pelvis at the fall; else the fall had none)."""
    met = dict.fromkeys(VIEWS, 0)
    falls = {**dict.fromkeys(VIEWS, 0), "none": 0}
    for obs, obstacles, fell in episodes:
        events = foot_approaches(obs, obstacles)
        for _, _, view in events:
            met[view] += 1
        if fell:
            final = float(np.asarray(obs)[-1, PELVIS_X])
            rows = np.asarray(obstacles, dtype=np.float64).reshape(-1, 3)
            recent = [view for _, j, view in events if rows[j, 0] >= final - NEAR_AFTER_M]
            falls[recent[-1] if recent else "none"] += 1
    return {"approach_m": APPROACH_M, "met": met, "falls_after": falls}


def format_approaches(a: dict[str, Any]) -> list[str]:
    """`approach_breakdown` as summary lines."""
    met, falls = a["met"], a["falls_after"]
    total = sum(met.values())
    if not total:
        return []
    share = ", ".join(f"{label} {met[v]} ({100 * met[v] / total:.0f} %)" for v, label in _VIEW_LABELS)
    how = f"each foot's first toe or heel within {a['approach_m']:g} m"
    lines = [f"  a foot met an obstacle {total} times ({how}): {share}"]
    if sum(falls.values()):
        after = ", ".join(
            f"{label} {falls[v]} of {met[v]}" + (f" ({100 * falls[v] / met[v]:.1f} %)" if met[v] else "")
            for v, label in _VIEW_LABELS
        )
        lines.append(f"  falls after their last such meeting, by its view: {after}; no meeting {falls['none']}")
    return lines


_VIEW_LABELS = (("in_view", "in view"), ("passed", "passed, out of view"), ("hidden", "hidden behind a nearer one"))


def _label(lo: float | None, hi: float | None, unit: str = "") -> str:
    if lo is None:
        return f"< {hi:g}{unit}"
    if hi is None:
        return f">= {lo:g}{unit}"
    return f"{lo:g}-{hi:g}{unit}"


def _rates(rows: list[dict[str, Any]], key: str, unit: str) -> str:
    return "; ".join(f"{_label(*r[key], unit)} {100 * r['fall_rate']:.1f} % of {r['n']}" for r in rows if r["n"])


def format_breakdown(b: dict[str, Any]) -> list[str]:
    """The breakdown as summary lines (indented like lrun eval's)."""
    lines = []
    if b["obstacles_met"]:
        share = "0"  # (no fall: no share to give)
        if b["falls"]:
            share = f"{b['falls_at_obstacle']} of {b['falls']} ({100 * b['falls_at_obstacle'] / b['falls']:.0f} %)"
        radius = b["fall_obstacle_radius_median_m"]
        lines.append(
            f"  falls at obstacles {share} (the pelvis from {b['near_m']['before']:g} m before "
            f"an obstacle's centre to {b['near_m']['after']:g} m past it)"
            + (f", median radius {radius:.2f} m" if radius is not None else "")
            + f"; obstacles met {b['obstacles_met']}, median radius {b['met_obstacle_radius_median_m']:.2f} m"
        )
        lines.append(f"  falls per obstacle met, by radius: {_rates(b['by_radius'], 'radius_m', ' m')}")
    elif b["obstacles"]:
        lines.append("  obstacles met 0: every episode ended before its first obstacle")
    short = b["short"]
    if short["episodes"]:
        ahead = ""
        if b["obstacles_met"] or short["before_obstacle"]:
            radius = short["obstacle_radius_median_m"]
            ahead = f", {short['before_obstacle']} of them with an obstacle <= {STOP_AHEAD_M:g} m ahead"
            ahead += f" (median radius {radius:.2f} m)" if radius is not None else ""
        lines.append(
            f"  stopped short {short['episodes']} (no fall, under {SHORT_SHARE:g} x the median distance of "
            f"those){ahead}"
        )
    if "by_strength" in b:
        lines.append(f"  falls by the weaker muscle strength: {_rates(b['by_strength'], 'strength', '')}")
    if "approaches" in b:
        lines += format_approaches(b["approaches"])
    return lines


def plot_breakdown(b: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Fall rate per obstacle met against its radius, and per episode against the weaker strength (95 % CIs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("by_radius", "radius_m", " m", "obstacle radius", "falls per obstacle met")]
    if "by_strength" in b:
        panels.append(("by_strength", "strength", "", "weaker of the two muscle strengths", "falls per episode"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (name, key, unit, xlabel, ylabel) in zip(axes[0], panels, strict=True):
        rows = [r for r in b[name] if r["n"]]
        rates = np.array([100 * r["fall_rate"] for r in rows])
        errors = np.array([[rate - 100 * r["ci95"][0], 100 * r["ci95"][1] - rate] for r, rate in zip(rows, rates)])
        positions = np.arange(len(rows))
        ax.bar(positions, rates, color="tab:red", alpha=0.7)
        if len(rows):
            ax.errorbar(positions, rates, yerr=errors.T, fmt="none", ecolor="black", capsize=3)
        ax.set_xticks(positions, [f"{_label(*r[key], unit)}\n(n {r['n']})" for r in rows], fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{ylabel} (%)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title or f"{b['falls']} falls in {b['episodes']} episodes", fontsize=10)
    return save_figure(fig, path, dpi=100)
