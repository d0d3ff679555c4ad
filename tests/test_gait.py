"""The knees' summary of an evaluation: fractions and percentiles per knee, from the stored observations."""

from __future__ import annotations

import numpy as np
import pytest

from lrun.analysis.gait import KNEE_LIGAMENT_RAD, format_knee_gait, knee_gait


def test_knee_gait_counts_each_knee_locked_backwards_or_flexed():
    obs = np.zeros((10, 41))
    obs[:, 7] = [0.3] * 6 + [-0.5] * 2 + [0.0] * 2  # right knee: 6 steps past the ligament, 2 flexed
    obs[:, 10] = np.linspace(-1.0, 0.0, 10)  # left: flexed where below -10 degrees, never locked
    gait = knee_gait(obs)
    assert gait["steps"] == 10
    assert gait["right"]["past_ligament"] == pytest.approx(0.6) and gait["right"]["flexed"] == pytest.approx(0.2)
    assert gait["right"]["median"] == pytest.approx(0.3)
    left = obs[:, 10]
    assert gait["left"]["past_ligament"] == 0.0
    assert gait["left"]["flexed"] == pytest.approx(np.mean(left < -KNEE_LIGAMENT_RAD))
    assert gait["left"]["p5"] == pytest.approx(np.percentile(left, 5))
    line = format_knee_gait(gait)
    assert "60 % / 0 %" in line and "20 % / 80 %" in line


def test_knee_gait_of_no_steps_is_nan_not_an_error():
    gait = knee_gait(np.zeros((0, 41)))
    assert gait["steps"] == 0 and np.isnan(gait["right"]["past_ligament"])
