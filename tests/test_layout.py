"""Episode layouts: drawn as the 2017 task specifies and reproducible by seed (pure numpy, no OpenSim)."""

from __future__ import annotations

import numpy as np
import pytest

from lrun.env.layout import NO_OBSTACLE, EpisodeLayout, draw_layout


def draw(seed: int, difficulty: int, max_obstacles: int) -> EpisodeLayout:
    return draw_layout(np.random.default_rng(seed), difficulty, max_obstacles)


def test_difficulty_0_has_no_obstacles_and_full_psoas():
    layout = draw(0, 0, 10)
    assert layout.obstacles.shape == (0, 3)
    assert layout.psoas == (1.0, 1.0)
    assert layout.next_obstacle(0.0) == NO_OBSTACLE


@pytest.mark.parametrize("max_obstacles, expected", [(0, 0), (1, 1), (3, 3), (10, 10), (25, 20)])
def test_obstacle_count(max_obstacles, expected):
    assert len(draw(1, 1, max_obstacles).obstacles) == expected
    assert len(draw(1, 2, max_obstacles).obstacles) == expected


def test_obstacles_follow_the_specified_distributions():
    layouts = [draw(seed, 2, 10) for seed in range(400)]
    obstacles = np.concatenate([lay.obstacles for lay in layouts])
    x, y, r = obstacles.T
    assert np.all(np.diff(layouts[0].obstacles[:, 0]) >= 0), "sorted by x"
    assert np.all(r >= 0.05)
    assert abs((r - 0.05).mean() - 0.05) < 0.005, "radius = 0.05 + Exp(scale 0.05)"
    near = x < 5.0
    assert np.all(x[near] >= 1.0)
    assert np.all(np.abs(y[near] / r[near]) <= 0.25)
    far = ~near
    assert np.all((y[far] / r[far] >= -0.05) & (y[far] / r[far] <= 0.25))
    # the extra 7 obstacles: 5 + cumulative sum of U(2, 4), so the last one sits at 5 + ~7 * 3
    last = np.array([lay.obstacles[-1, 0] for lay in layouts])
    assert np.all((last >= 5 + 7 * 2) & (last <= 5 + 7 * 4))
    assert abs(last.mean() - 26.0) < 0.3


def test_a_bigger_radius_scale_grows_every_obstacle_and_changes_nothing_else():
    for seed in range(20):
        task = draw(seed, 2, 10)
        big = draw_layout(np.random.default_rng(seed), 2, 10, radius_scale=0.1)
        assert np.array_equal(big.obstacles[:, 0], task.obstacles[:, 0]) and big.psoas == task.psoas
        assert np.allclose(big.obstacles[:, 2] - 0.05, 2 * (task.obstacles[:, 2] - 0.05))
        assert np.allclose(big.obstacles[:, 1] / big.obstacles[:, 2], task.obstacles[:, 1] / task.obstacles[:, 2])


def test_psoas_randomised_only_at_difficulty_2():
    assert all(draw(s, 1, 3).psoas == (1.0, 1.0) for s in range(20))
    strengths = np.array([draw(s, 2, 3).psoas for s in range(500)])
    assert np.all(strengths >= 0.5)
    assert abs(strengths.mean() - 1.0) < 0.02
    assert 0.07 < strengths.std() < 0.13
    assert not np.array_equal(strengths[:, 0], strengths[:, 1])


def test_same_seed_same_layout_other_seed_other_layout():
    assert draw(7, 2, 10) == draw(7, 2, 10)
    assert draw(7, 2, 10) != draw(8, 2, 10)


def test_next_obstacle_is_passed_once_pelvis_is_beyond_x_plus_radius():
    layout = EpisodeLayout(np.array([[2.0, 0.01, 0.1], [5.0, 0.0, 0.2]]))
    assert layout.next_obstacle(0.0) == pytest.approx((2.0, 0.01, 0.1))
    assert layout.next_obstacle(2.1) == pytest.approx((-0.1, 0.01, 0.1))
    assert layout.next_obstacle(2.11)[0] == pytest.approx(5.0 - 2.11)
    assert layout.next_obstacle(5.3) == NO_OBSTACLE


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="difficulty"):
        draw(0, 3, 3)
    with pytest.raises(ValueError, match="max_obstacles"):
        draw(0, 1, -1)


def test_round_trip_through_dict():
    layout = draw(3, 2, 10)
    assert EpisodeLayout.from_dict(layout.to_dict()) == layout
