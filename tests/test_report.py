"""Where episodes fell (lrun.analysis.falls): the breakdown's maths on a table worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lrun.analysis.falls import (
    approach_breakdown,
    falls_breakdown,
    foot_approaches,
    format_approaches,
    format_breakdown,
    plot_breakdown,
)
from lrun.env.features import OBSTACLE, PELVIS_X, point
from lrun.env.layout import EpisodeLayout

NAN = [np.nan] * 3


def table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Five episodes: a fall at a big obstacle, a clean run over two small ones, a fall on open ground before
    any obstacle, a stop 0.7 m in front of one, and a clean run without obstacles (parked and padded slots)."""
    distance = np.array([2.1, 10.0, 0.5, 1.5, 9.0])
    fell = np.array([1, 0, 1, 0, 0])
    obstacles = np.array(
        [
            [[2.0, 0.0, 0.25], [4.0, 0.0, 0.05], NAN],
            [[2.0, 0.0, 0.05], [5.0, 0.0, 0.12], NAN],
            [[3.0, 0.0, 0.30], NAN, NAN],
            [[2.2, 0.0, 0.22], NAN, NAN],
            [[0.0, -0.1, 1e-4], NAN, NAN],  # an unused slot, parked below the ground
        ]
    )
    strengths = np.array([[1.0, 1.0], [0.7, 1.0], [0.95, 0.85], [1.0, 1.0], [1.1, 0.9]])
    return distance, fell, obstacles, strengths


def test_falls_are_put_down_to_the_obstacle_they_happen_at_and_counted_per_obstacle_met():
    b = falls_breakdown(*table())
    assert (b["episodes"], b["falls"], b["falls_at_obstacle"], b["falls_on_open_ground"]) == (5, 2, 1, 1)
    assert b["obstacles"] == 6 and b["obstacles_met"] == 3  # 2.0 in episode 0; 2.0 and 5.0 in episode 1
    assert b["fall_obstacle_radius_median_m"] == 0.25 and b["met_obstacle_radius_median_m"] == 0.12
    assert [(r["n"], r["falls"]) for r in b["by_radius"]] == [(1, 0), (1, 0), (0, 0), (1, 1)]
    assert b["by_radius"][-1]["radius_m"] == [0.2, None] and b["by_radius"][-1]["fall_rate"] == 1.0
    # stopped short: under half the median (9 m) of the runs that did not fall, 0.7 m in front of r 0.22
    assert b["short"] == {"episodes": 1, "before_obstacle": 1, "obstacle_radius_median_m": 0.22}
    # the weaker strength: 1.0, 0.7, 0.85, 1.0, 0.9
    assert [(r["n"], r["falls"]) for r in b["by_strength"]] == [(1, 0), (1, 1), (1, 0), (2, 1)]
    lines = "\n".join(format_breakdown(b))
    assert "falls at obstacles 1 of 2 (50 %)" in lines and ">= 0.2 m 100.0 % of 1" in lines
    assert "stopped short 1" in lines and "0.8-0.9 100.0 % of 1" in lines


def test_without_weakened_muscles_or_obstacles_met_the_breakdown_says_so():
    distance, fell, obstacles, _ = table()
    b = falls_breakdown(distance, fell, obstacles, np.ones((5, 2)))
    assert "by_strength" not in b and "weaker muscle" not in "\n".join(format_breakdown(b))
    early = falls_breakdown(np.array([-0.8, 0.9]), np.array([1, 1]), obstacles[:2], None)
    assert early["obstacles_met"] == 0 and early["falls_on_open_ground"] == 2
    assert format_breakdown(early) == ["  obstacles met 0: every episode ended before its first obstacle"]
    clean = falls_breakdown(distance[[1, 4]], fell[[1, 4]], obstacles[[1, 4]], None)  # no fall at all
    assert clean["falls"] == 0 and clean["fall_obstacle_radius_median_m"] is None
    assert format_breakdown(clean)[0].startswith("  falls at obstacles 0 (the pelvis")


@pytest.mark.parametrize("weakened", [True, False])
def test_the_falls_figure_is_drawn_with_or_without_strengths(tmp_path, weakened):
    distance, fell, obstacles, strengths = table()
    b = falls_breakdown(distance, fell, obstacles, strengths if weakened else None)
    path = plot_breakdown(b, tmp_path / "falls.png")
    assert path.stat().st_size > 5000


def test_a_training_report_says_where_the_episodes_of_its_last_tenth_fell():
    from lrun.analysis.report import format_report, late_falls

    distance, fell, obstacles, strengths = table()
    ep = {  # the five episodes in each of 20 iterations
        "policy_version": np.repeat(np.arange(20), 5),
        "difficulty": np.full(100, 2),
        "distance": np.tile(distance, 20),
        "fell": np.tile(fell, 20),
        "obstacles": np.tile(obstacles, (20, 1, 1)),
        "psoas": np.tile(strengths, (20, 1)),
    }
    late = late_falls(ep)
    assert late["iterations"] == [19, 20] and late["episodes"] == 10 and late["falls_at_obstacle"] == 2
    report = {"iterations": [], "by_difficulty": [], "stored_steps": 0, "episodes": 100, "falls": late}
    assert "where the episodes of iterations 19-20 (10) fell:\n  falls at obstacles 2 of 4" in format_report(report)
    assert late_falls({**ep, "difficulty": np.zeros(100, int)}) is None  # flat ground: nothing to say


def walk_over(layout: EpisodeLayout, trail_m: float = 0.4, lift_m: float = 0.0) -> np.ndarray:
    """Observations of a walk from 0 to 4 m in 2 cm steps: the left foot 0.2 m ahead of the pelvis, the right
    `trail_m` behind, both at `lift_m` height; the obstacle slot filled as RunEnv fills it."""
    rows = []
    for x in np.arange(0.0, 4.0, 0.02):
        obs = np.zeros(41)
        obs[PELVIS_X] = x
        obs[list(OBSTACLE)] = layout.next_obstacle(x)
        for name, offset in (("toes_l", 0.2), ("talus_l", 0.1), ("toes_r", -trail_m), ("talus_r", -trail_m - 0.1)):
            ix, iy = point(name)
            obs[ix], obs[iy] = x + offset, lift_m
        rows.append(obs)
    return np.array(rows)


def test_each_foots_meeting_with_an_obstacle_is_classed_by_what_the_observation_showed():
    # one obstacle at 2 m (radius 0.1): the leading foot meets it in view; the trailing foot, 0.4 m behind the
    # pelvis, meets it after the pelvis passed x + r = 2.1 m: out of view
    one = EpisodeLayout(np.array([[2.0, 0.0, 0.1]]), (1.0, 1.0))
    events = foot_approaches(walk_over(one), one.obstacles)
    assert [view for _, _, view in events] == ["in_view", "passed"]
    # two crowded obstacles: the second (2.15 m) is hidden behind the first while the leading foot reaches it
    two = EpisodeLayout(np.array([[2.0, 0.0, 0.1], [2.15, 0.0, 0.05]]), (1.0, 1.0))
    views = {(j, view) for _, j, view in foot_approaches(walk_over(two), two.obstacles)}
    assert (1, "hidden") in views and (0, "in_view") in views
    # feet lifted clear of it: no meeting
    assert foot_approaches(walk_over(one, lift_m=0.5), one.obstacles) == []


def test_falls_are_counted_by_the_view_of_their_last_meeting_and_summarised():
    one = EpisodeLayout(np.array([[2.0, 0.0, 0.1]]), (1.0, 1.0))
    walk = walk_over(one)
    fell_after = walk[: int(2.6 / 0.02)]  # ends 0.5 m past the obstacle: after the trailing foot's meeting
    far = walk_over(EpisodeLayout(np.array([[0.5, 0.0, 0.05]]), (1.0, 1.0)))  # ends 3.5 m past its obstacle
    result = approach_breakdown(
        [
            (walk, one.obstacles, False),
            (fell_after, one.obstacles, True),
            (far, np.array([[0.5, 0.0, 0.05]]), True),
        ]
    )
    assert result["met"] == {"in_view": 3, "passed": 3, "hidden": 0}
    assert result["falls_after"] == {"in_view": 0, "passed": 1, "hidden": 0, "none": 1}
    lines = format_approaches(result)
    assert "in view 3 (50 %)" in lines[0] and "passed, out of view 1 of 3 (33.3 %)" in lines[1]
    assert "no meeting 1" in lines[1]
