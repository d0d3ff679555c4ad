"""The stick figure against the OpenSim model it draws: knees where the model puts them, flexed or hyperextended."""

from __future__ import annotations

import numpy as np
import pytest

from lrun.env.model import OBSERVED_BODIES, find_model_file
from lrun.env.stick_figure import knee, skeleton

opensim = pytest.importorskip("opensim")


@pytest.fixture(scope="module")
def posed():
    """A function: pose the model (pelvis tilt, hips, knees) and return its observation and true knee positions."""
    model = opensim.Model(str(find_model_file()))
    state = model.initSystem()
    coordinates, bodies = model.getCoordinateSet(), model.getBodySet()

    def pose(tilt: float, hip: float, knee_r: float, knee_l: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        values = {"pelvis_tilt": tilt, "hip_flexion_r": hip, "hip_flexion_l": -hip, "knee_angle_r": knee_r}
        values["knee_angle_l"] = knee_l
        for name, value in values.items():
            coordinates.get(name).setValue(state, value, False)
        model.realizePosition(state)
        obs = np.zeros(41)
        obs[0], obs[7], obs[10] = tilt, knee_r, knee_l
        for i, body in enumerate(OBSERVED_BODIES):
            p = bodies.get(body).getPositionInGround(state)
            obs[22 + 2 * i : 24 + 2 * i] = p.get(0), p.get(1)
        truth = {}
        for side in ("r", "l"):  # the tibia's origin is the knee joint's centre
            p = bodies.get(f"tibia_{side}").getPositionInGround(state)
            truth[f"knee_{side}"] = np.array([p.get(0), p.get(1)])
        return obs, truth

    return pose


@pytest.mark.parametrize(
    "tilt, hip, knee_r, knee_l",
    [(0.0, 0.3, -0.8, -0.3), (-0.1, 0.5, 0.4, -1.2), (0.1, -0.2, 0.25, 0.5)],  # flexed and hyperextended
)
def test_knees_are_drawn_where_the_model_has_them(posed, tilt, hip, knee_r, knee_l):
    obs, truth = posed(tilt, hip, knee_r, knee_l)
    drawn = skeleton(obs)
    for side in ("r", "l"):
        assert np.linalg.norm(drawn[f"knee_{side}"] - truth[f"knee_{side}"]) < 0.03, side


def test_a_hyperextended_knee_bends_the_other_way_from_a_flexed_one():
    hip, ankle = np.array([0.0, 0.9]), np.array([0.1, 0.1])
    flexed, locked = knee(hip, ankle, -0.5), knee(hip, ankle, 0.5)
    assert not np.allclose(flexed, locked)
    # mirror images about the hip-ankle line: same distances from hip and ankle
    assert np.linalg.norm(flexed - hip) == pytest.approx(np.linalg.norm(locked - hip))
    assert np.linalg.norm(flexed - ankle) == pytest.approx(np.linalg.norm(locked - ankle))
    assert flexed[0] > locked[0]  # facing +x: a flexed knee ahead of a locked one
