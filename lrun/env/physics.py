"""Integrator settings for the OpenSim simulation, as plain data (no opensim import).

`graders-2017` is what the 2017 Learning to Run graders ran: their env (stanfordnmbl/osim-rl 48494f5,
osim/env/osim.py) built a new `opensim.Manager(model)` every step and never set an accuracy, so OpenSim's
defaults applied: Runge-Kutta-Merson at accuracy 1e-3 (measured on OpenSim 4.6: a default Manager gives the same
states as this preset, to 0.0 over 40 steps). `accurate` (accuracy 5e-5) is the stricter setting osim-rl 2.x
adopted in 2018: not the 2017 task, though results on it are close. `fast` trades accuracy for speed for
training (`lrun bench env` reports the speed and the trajectory deviation of each).
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


#: Named presets (see the module docstring).
PRESETS: dict[str, Physics] = {
    "graders-2017": Physics("rk-merson", 1e-3),
    "accurate": Physics("rk-merson", 5e-5),
    "fast": Physics("semi-explicit-euler2", 1e-2),
}
#: Earlier names, still accepted (configs, checkpoints and evaluations of before 2026-12-03 carry them):
#: `reference` was `accurate`, once mistaken for the graders' setting; `medium` was `graders-2017`.
ALIASES: dict[str, str] = {"reference": "accurate", "medium": "graders-2017"}
#: What the 2017 task was graded on: `lrun eval`'s and the env's default.
GRADERS_PHYSICS = "graders-2017"
#: Every name `resolve_physics` takes.
PHYSICS_NAMES: tuple[str, ...] = (*PRESETS, *ALIASES)


def resolve_physics(physics: Physics | str | dict | None) -> Physics:
    """Turn a preset name (or an earlier name in `ALIASES`), a dict of fields or a `Physics` into a `Physics`
    (None gives the graders' setting)."""
    if physics is None:
        return PRESETS[GRADERS_PHYSICS]
    if isinstance(physics, Physics):
        return physics
    if isinstance(physics, str):
        if physics not in PHYSICS_NAMES:
            raise ValueError(f"unknown physics preset {physics!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[ALIASES.get(physics, physics)]
    if isinstance(physics, dict):
        unknown = set(physics) - {"integrator", "accuracy", "min_step"}
        if unknown:
            raise ValueError(f"unknown physics field(s) {sorted(unknown)}")
        return Physics(**physics)
    raise TypeError(f"physics must be a preset name, a dict or a Physics, got {type(physics).__name__}")
