"""Integrator settings for the OpenSim simulation, as plain data (no opensim import).

The reference setting is the one the challenge graders used (Runge-Kutta-Merson at accuracy 5e-5). Cheaper
presets trade accuracy for speed; a curriculum trains on them and evaluates on the reference
(`lrun bench env` reports the speed and the trajectory deviation of each).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Integrator names accepted in `Physics.integrator`, mapped to `opensim.Manager.IntegratorMethod_*` suffixes.
INTEGRATORS: dict[str, str] = {
    "rk-merson": "RungeKuttaMerson",
    "rk-feldberg": "RungeKuttaFeldberg",
    "rk2": "RungeKutta2",
    "rk3": "RungeKutta3",
    "semi-explicit-euler2": "SemiExplicitEuler2",
    "explicit-euler": "ExplicitEuler",
    "verlet": "Verlet",
}

#: Seconds of simulated time per env step: the task's control interval (0.01 s, as in 2017).
STEP_SECONDS = 0.01


@dataclass(frozen=True)
class Physics:
    """How one 0.01 s step is integrated."""

    integrator: str = "rk-merson"
    """Integrator method, one of `INTEGRATORS`."""
    accuracy: float = 5e-5
    """Error tolerance of the variable-step integrator."""
    min_step: float = 1e-8
    """Smallest internal step (s). Bounds the work of one step: an exploding state makes the error control shrink
    the step forever otherwise (measured: a hang). Never reached in normal motion."""

    def __post_init__(self) -> None:
        if self.integrator not in INTEGRATORS:
            raise ValueError(f"unknown integrator {self.integrator!r}; choose one of {sorted(INTEGRATORS)}")
        if not (0.0 < self.accuracy < 1.0):
            raise ValueError(f"integrator accuracy must lie in (0, 1), got {self.accuracy!r}")
        if not (0.0 < self.min_step < 0.01):
            raise ValueError(f"min_step must lie in (0, 0.01) s, got {self.min_step!r}")

    def to_dict(self) -> dict[str, float | str]:
        """Plain-data form, for configs, snapshots and the HDF5 episode table."""
        return asdict(self)


#: Named presets. `reference` is the graders' setting; use it for the last stage and for evaluation.
PRESETS: dict[str, Physics] = {
    "reference": Physics("rk-merson", 5e-5),
    "medium": Physics("rk-merson", 1e-3),
    "fast": Physics("semi-explicit-euler2", 1e-2),
}


def resolve_physics(physics: Physics | str | dict | None) -> Physics:
    """Turn a preset name, a dict of fields or a `Physics` into a `Physics` (None gives the reference)."""
    if physics is None:
        return PRESETS["reference"]
    if isinstance(physics, Physics):
        return physics
    if isinstance(physics, str):
        if physics not in PRESETS:
            raise ValueError(f"unknown physics preset {physics!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[physics]
    if isinstance(physics, dict):
        unknown = set(physics) - {"integrator", "accuracy", "min_step"}
        if unknown:
            raise ValueError(f"unknown physics field(s) {sorted(unknown)}")
        return Physics(**physics)
    raise TypeError(f"physics must be a preset name, a dict or a Physics, got {type(physics).__name__}")
