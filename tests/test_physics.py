"""Physics settings: presets and validation (no OpenSim)."""

from __future__ import annotations

import pytest

from lrun.env.physics import PRESETS, Physics, resolve_physics


def test_the_default_is_the_2017_graders_setting_and_earlier_names_still_resolve():
    default = resolve_physics(None)
    assert (default.integrator, default.accuracy) == ("rk-merson", 1e-3)  # OpenSim's defaults (tests/test_round2.py)
    assert resolve_physics("graders-2017") == default == resolve_physics("medium")
    assert resolve_physics("reference") == resolve_physics("accurate") == Physics("rk-merson", 5e-5)
    assert resolve_physics({"integrator": "rk2", "accuracy": 1e-2}) == Physics("rk2", 1e-2)
    assert len(PRESETS) >= 2


@pytest.mark.parametrize(
    "bad, message",
    [
        ("warp", "unknown physics preset"),
        ({"integrator": "magic"}, "unknown integrator"),
        ({"accuracy": 0.0}, "accuracy"),
        ({"acuracy": 1e-3}, "unknown physics field"),
        (3, "physics must be"),
    ],
)
def test_bad_physics_is_rejected_with_a_clear_message(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        resolve_physics(bad)
