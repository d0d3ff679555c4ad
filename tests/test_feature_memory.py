"""relative-v2: the last obstacle the pelvis passed, remembered from earlier observations of the episode."""

from __future__ import annotations

import numpy as np
import pytest

from lrun.env.features import (
    FEATURES,
    OBSTACLE,
    PASSED_RANGE_M,
    PELVIS_X,
    FeatureStream,
    episode_features,
    extension_of,
    features,
    has_memory,
    observation_mirror,
)
from lrun.env.layout import EpisodeLayout

V1, V2 = "relative-v1", "relative-v2"
NONE = (-PASSED_RANGE_M, 0.0, 0.0)
LAYOUT = EpisodeLayout(np.array([[1.5, 0.01, 0.1], [2.0, -0.02, 0.2], [6.0, 0.03, 0.15]]), (0.9, 1.0))


def observation(pelvis_x: float, layout: EpisodeLayout = LAYOUT, seed: int = 0) -> np.ndarray:
    """A task observation with the pelvis at `pelvis_x` and the obstacle slot as RunEnv fills it (the body
    values random: the memory reads the pelvis x and the obstacle slot only)."""
    obs = np.random.default_rng(seed).normal(size=41)
    obs[PELVIS_X] = pelvis_x
    obs[list(OBSTACLE)] = layout.next_obstacle(pelvis_x)
    return obs


def expected_passed(pelvis_x: float, layout: EpisodeLayout = LAYOUT) -> tuple[float, float, float]:
    """Ground truth from the layout: the last obstacle with x + radius < pelvis x, if within reach."""
    passed = [row for row in layout.obstacles if row[0] + row[2] < pelvis_x]
    if not passed or pelvis_x - passed[-1][0] > PASSED_RANGE_M:
        return NONE
    x, y, r = passed[-1]
    return (x - pelvis_x, y, r)


def test_relative_v2_extends_relative_v1_by_the_passed_obstacle():
    assert FEATURES[V2][0] == FEATURES[V1][0] + 3 and extension_of(V2, V1) == 3 and extension_of(V1, V1) == 0
    with pytest.raises(ValueError, match="does not extend"):
        extension_of(V1, V2)
    assert has_memory(V2) and not has_memory(V1)
    with pytest.raises(ValueError, match="FeatureStream"):
        features(V2, observation(0.0))
    obs = observation(1.7)
    mapped = FeatureStream(V2, 1)(obs[None])[0]
    np.testing.assert_array_equal(mapped[:38], features(V1, obs))
    mirror = observation_mirror(V2)
    assert np.array_equal(mirror[mirror], np.arange(41)) and list(mirror[38:]) == [38, 39, 40]


def test_walking_forward_remembers_each_obstacle_once_the_pelvis_passes_it():
    stream = FeatureStream(V2, 1)
    for x in np.arange(0.0, 9.0, 0.04):
        got = stream(observation(x)[None])[0, 38:]
        np.testing.assert_allclose(got, expected_passed(x), atol=1e-12, err_msg=f"pelvis at {x:.2f} m")
    # and the remembered one was really out of view: the task showed the next obstacle (or none) meanwhile
    assert expected_passed(1.59) == NONE and expected_passed(1.61)[2] == 0.1


def test_memory_is_idempotent_walking_back_forgets_and_a_jump_or_reset_starts_afresh():
    stream = FeatureStream(V2, 1)
    for x in np.arange(0.0, 2.5, 0.04):
        stream(observation(x)[None])
    once = stream(observation(2.5)[None])
    np.testing.assert_array_equal(stream(observation(2.5)[None]), once)  # the same observation again: no change
    assert once[0, 40] == 0.2  # the second obstacle, passed at 2.2 m
    back = stream(observation(2.1)[None])  # walked back: the second obstacle is in view again, none passed
    assert tuple(back[0, 38:]) == NONE
    for x in np.arange(2.1, 2.6, 0.04):
        stream(observation(x)[None])
    assert stream(observation(2.6)[None])[0, 40] == 0.2
    far = stream(observation(3.2)[None])  # a long frame skip at speed: forwards, it is the same episode
    assert far[0, 40] == 0.2
    assert tuple(stream(observation(0.0)[None])[0, 38:]) == NONE  # the pelvis jumped back: a new episode
    for x in np.arange(0.0, 2.6, 0.04):
        stream(observation(x)[None])
    stream.reset()
    # after a reset at 2.6 m nothing was seen pass: an obstacle out of view is not known
    assert tuple(stream(observation(2.64)[None])[0, 38:]) == NONE


def test_rows_are_independent_and_stored_episodes_map_as_streams_do():
    other = EpisodeLayout(np.array([[1.2, 0.0, 0.3]]), (1.0, 1.0))
    xs = np.arange(0.0, 3.0, 0.05)
    a = np.stack([observation(x) for x in xs])
    b = np.stack([observation(x, other) for x in xs])
    stream = FeatureStream(V2, 2)
    rows = np.stack([stream(np.stack([a[t], b[t]])) for t in range(len(xs))], axis=1)
    for k, layout in enumerate((LAYOUT, other)):
        for t, x in enumerate(xs):
            np.testing.assert_allclose(rows[k, t, 38:], expected_passed(x, layout), atol=1e-12)
    # as a store keeps them: two episodes' rows interleaved, in time order within each (float32)
    obs = np.empty((2 * len(xs), 41), np.float32)
    obs[0::2], obs[1::2] = a, b
    ids = np.tile([7, 9], len(xs))
    stored = episode_features(V2, obs, ids)
    np.testing.assert_allclose(stored[0::2], rows[0], atol=1e-5)
    np.testing.assert_allclose(stored[1::2], rows[1], atol=1e-5)
    np.testing.assert_array_equal(episode_features(V1, obs, ids), features(V1, obs))
    # episodes of unequal length, interleaved irregularly (order kept within each): the same per-episode features
    short = 25
    owner = np.random.default_rng(0).permutation(np.repeat([0, 1], [len(xs), short]))
    position = np.array([np.count_nonzero(owner[:i] == owner[i]) for i in range(len(owner))])
    mixed = np.where((owner == 0)[:, None], a[np.minimum(position, len(xs) - 1)], b[np.minimum(position, short - 1)])
    stored = episode_features(V2, mixed, np.where(owner == 0, 3, 1))
    np.testing.assert_allclose(stored[owner == 0], rows[0], atol=1e-12)
    np.testing.assert_allclose(stored[owner == 1], rows[1, :short], atol=1e-12)


def test_single_rows_update_only_their_own_memory():
    stream = FeatureStream(V2, 2)
    for x in np.arange(0.0, 1.8, 0.04):
        stream(np.stack([observation(x), observation(x)]))
    final = stream(observation(1.8)[None], rows=[1])  # row 1's episode ends here (its final observation)
    assert final.shape == (1, 41) and final[0, 40] == 0.1
    stream.reset([1])
    both = stream(np.stack([observation(1.84), observation(0.0)]))
    assert both[0, 40] == 0.1 and tuple(both[1, 38:]) == NONE


def test_on_the_real_task_the_memory_holds_the_obstacle_the_pelvis_last_passed():
    """models/round2 on a round-2 layout (fast physics): at every decision the remembered obstacle is the last
    one of the env's own layout with x + radius behind the pelvis, while the task's slot already shows the next."""
    import lrun

    agent = lrun.load("round2")
    env = agent.make_env("round2", physics="fast")
    stream = FeatureStream(V2, 1)
    obs, _ = env.reset(seed=3)
    layout, passed_any = env.unwrapped.layout, False
    for _ in range(120):
        got = stream(obs[None])[0, 38:]
        np.testing.assert_allclose(got, expected_passed(float(obs[PELVIS_X]), layout), atol=1e-9)
        passed_any |= got[2] > 0
        obs, _, terminated, truncated, _ = env.step(agent.act(obs))
        if terminated or truncated:
            break
    env.close()
    assert passed_any, "the episode passed no obstacle: choose another seed"
