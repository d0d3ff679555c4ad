"""The OpenSim side of the environment: model, obstacles, controls, integration and the raw observation.

Everything that touches `opensim` for the running task lives here. Measured design decisions
(see shared/docs/opensim-4.6.md):

* One `opensim.Manager` per built system, re-initialised from the current state before every 0.01 s step.
  The step's result then depends only on the state variables and the action (as with the 2017 grader, which
  built a new Manager per step), so a snapshot restores bit-exactly; re-initialising costs ~3 % at the
  reference accuracy, a new Manager ~8 %.
* Obstacles are contact spheres fixed to the ground, each with one Hunt-Crossley force per foot sphere.
  The 2017 model put each sphere on a tiny body whose planar-joint coordinates were then locked: the same
  contact, but 3 extra degrees of freedom and constraints per obstacle to integrate. One force per
  (obstacle, foot sphere) pair also avoids the 2017 quirk of foot spheres contacting each other inside
  the obstacle forces.
* Sphere radius and location, contact stiffness and muscle strength are model properties: changing them
  needs `initSystem()` (~7-9 ms, measured), done only when an episode's layout differs from the built one.
  `initSystem()` re-creates the controller's functions, so cached `opensim.Constant` handles are refreshed
  after every rebuild (using a stale one segfaults).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from lrun.env.layout import WEAKENING, EpisodeLayout
from lrun.env.physics import INTEGRATORS, STEP_SECONDS, Physics

try:
    import opensim
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("lrun.env needs the `opensim` package (pip install opensim); run `make install`") from exc

opensim.Logger.setLevelString("off")  # 4.6 logs ~12 lines per integrate call otherwise

MODEL_FILE_NAME = "gait9dof18musc.osim"
PELVIS_COORDINATES = ("pelvis_tilt", "pelvis_tx", "pelvis_ty")
JOINT_COORDINATES = ("hip_flexion_r", "knee_angle_r", "ankle_angle_r", "hip_flexion_l", "knee_angle_l", "ankle_angle_l")
OBSERVED_BODIES = ("head", "pelvis", "torso", "toes_l", "toes_r", "talus_l", "talus_r")
FOOT_SPHERES = ("r_heel", "r_toe", "l_heel", "l_toe")
#: A parked (unused) obstacle: tiny and 10 cm under ground, as in 2017.
PARKED_RADIUS = 1e-4
PARKED_Y = -0.1
#: State magnitudes beyond this mean the integration blew up (real ones stay below ~1e2).
EXPLODED = 1e5


class IntegratorFailure(RuntimeError):
    """The integrator raised, or produced a non-finite or exploded state."""


def find_model_file() -> Path:
    """Path of `gait9dof18musc.osim` inside the installed osim-rl package (without importing gym)."""
    override = os.environ.get("LRUN_MODEL_FILE")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("osim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the osim-rl package (model files) is not installed: pip install --no-deps osim-rl==3.0.11 "
            "(or run `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / MODEL_FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{MODEL_FILE_NAME} not found in the osim-rl package at {path}")
    return path


def model_checksum(path: Path | None = None) -> str:
    """SHA-256 of the model file, for provenance in stored data."""
    return hashlib.sha256(Path(path or find_model_file()).read_bytes()).hexdigest()


def _summarise_simtk_error(exc: Exception) -> str:
    """The informative line of a SimTK/OpenSim exception message (drops the C++ signature and location)."""
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.split("': ", 1)[-1].strip() if line.startswith("std::exception") else line.strip()
        if line and not line.startswith("Thrown at"):
            return line
    return repr(exc)


class GaitModel:
    """`gait9dof18musc` with obstacle slots, constant-excitation controls and one-step integration."""

    def __init__(
        self,
        max_obstacles: int,
        physics: Physics,
        model_file: Path | str | None = None,
        weakening: str = "graders-2017",
    ) -> None:
        if weakening not in WEAKENING:
            raise ValueError(f"weakening must be one of {', '.join(WEAKENING)}, got {weakening!r}")
        self.max_obstacles = int(max_obstacles)
        self.physics = physics
        self.model_file = Path(model_file) if model_file else find_model_file()
        if not self.model_file.is_file():
            raise FileNotFoundError(f"model file not found: {self.model_file}")
        self.model = opensim.Model(str(self.model_file))
        self._add_controller()
        self._add_obstacle_slots()
        muscles = self.model.getMuscles()
        self.muscle_names = tuple(muscles.get(i).getName() for i in range(muscles.getSize()))
        self.weakening = weakening
        self._psoas = [muscles.get(key) for key in WEAKENING[weakening]]
        self.weakened_muscles = tuple(m.getName() for m in self._psoas)  # (left slot, right slot)
        self._psoas_base_force = [m.getMaxIsometricForce() for m in self._psoas]
        self.built_layout: EpisodeLayout | None = None
        self.state = None
        self._build(EpisodeLayout())

    # --- construction -------------------------------------------------------------------------------------
    def _add_controller(self) -> None:
        self._controller = opensim.PrescribedController()
        muscles = self.model.getMuscles()
        for i in range(muscles.getSize()):
            self._controller.addActuator(muscles.get(i))
            self._controller.prescribeControlForActuator(muscles.get(i).getName(), opensim.Constant(0.0))
        self.model.addController(self._controller)

    def _add_obstacle_slots(self) -> None:
        ground = self.model.getGround()
        self._spheres = []
        self._sphere_forces = []
        for k in range(self.max_obstacles):
            sphere = opensim.ContactSphere(PARKED_RADIUS, opensim.Vec3(0.0, PARKED_Y, 0.0), ground, f"obstacle_{k}")
            self.model.addContactGeometry(sphere)
            forces = []
            for foot in FOOT_SPHERES:
                force = opensim.HuntCrossleyForce()
                force.setName(f"obstacle_{k}_{foot}")
                force.addGeometry(f"obstacle_{k}")
                force.addGeometry(foot)
                force.setStiffness(1.0e6 / PARKED_RADIUS)
                force.setDissipation(1e-5)
                force.setStaticFriction(0.0)
                force.setDynamicFriction(0.0)
                force.setViscousFriction(0.0)
                self.model.addForce(force)
                forces.append(force)
            self._spheres.append(sphere)
            self._sphere_forces.append(forces)

    def _build(self, layout: EpisodeLayout) -> None:
        """Write the layout into the model's properties and rebuild the system."""
        if len(layout.obstacles) > self.max_obstacles:
            raise ValueError(f"layout has {len(layout.obstacles)} obstacles, model has {self.max_obstacles} slots")
        for k in range(self.max_obstacles):
            if k < len(layout.obstacles):
                x, y, r = (float(v) for v in layout.obstacles[k])
            else:
                x, y, r = 0.0, PARKED_Y, PARKED_RADIUS
            self._spheres[k].setRadius(r)
            self._spheres[k].set_location(opensim.Vec3(x, y, 0.0))
            for force in self._sphere_forces[k]:
                force.setStiffness(1.0e6 / r)
        for muscle, base, strength in zip(self._psoas, self._psoas_base_force, layout.psoas, strict=False):
            muscle.setMaxIsometricForce(base * strength)
        self.model.initSystem()
        self._cache_handles()
        self.built_layout = layout

    def _cache_handles(self) -> None:
        model = self.model
        functions = self._controller.get_ControlFunctions()
        self._controls = [opensim.Constant.safeDownCast(functions.get(i)) for i in range(functions.getSize())]
        names = [model.getStateVariableNames().get(i) for i in range(model.getNumStateVariables())]
        index = {name: i for i, name in enumerate(names)}
        coordinates = model.getCoordinateSet()

        def path(name: str, kind: str) -> str:
            return f"{coordinates.get(name).getJoint().getAbsolutePathString()}/{name}/{kind}"

        self._pelvis_value_idx = np.array([index[path(n, "value")] for n in PELVIS_COORDINATES])
        self._pelvis_speed_idx = np.array([index[path(n, "speed")] for n in PELVIS_COORDINATES])
        self._joint_value_idx = np.array([index[path(n, "value")] for n in JOINT_COORDINATES])
        self._joint_speed_idx = np.array([index[path(n, "speed")] for n in JOINT_COORDINATES])
        self._bodies = [model.getBodySet().get(name) for name in OBSERVED_BODIES]
        forces = model.getForceSet()
        self._ligaments = [
            opensim.CoordinateLimitForce.safeDownCast(forces.get(i))
            for i in range(forces.getSize())
            if forces.get(i).getConcreteClassName() == "CoordinateLimitForce"
        ]
        self._manager = opensim.Manager(model)
        method = getattr(opensim.Manager, "IntegratorMethod_" + INTEGRATORS[self.physics.integrator])
        self._manager.setIntegratorMethod(method)  # replaces the integrator: before the accuracy
        self._manager.setIntegratorAccuracy(self.physics.accuracy)
        self._manager.setIntegratorMinimumStepSize(self.physics.min_step)
        self._manager.setWriteToStorage(False)
        self._manager.setPerformAnalyses(False)
        self.n_state_variables = len(names)
        self.state_variable_names = tuple(names)

    # --- episode -------------------------------------------------------------------------------------------
    def apply_layout(self, layout: EpisodeLayout) -> bool:
        """Make the model match `layout`; rebuild only if it differs. Returns whether it rebuilt."""
        if self.built_layout is not None and layout == self.built_layout:
            return False
        self._build(layout)
        return True

    def reset_state(self) -> None:
        """Default pose (pelvis tilt -0.05, y 0.91), muscles in equilibrium, excitations 0, time 0."""
        self.set_excitations(np.zeros(len(self._controls)))  # no carry-over of the last action into a reset
        state = self.model.initializeState()
        self.model.equilibrateMuscles(state)
        state.setTime(0.0)
        self.state = state

    def set_forward_speed(self, speed: float) -> None:
        """Set the pelvis's forward speed (every body translates with it; the joints stay at rest)."""
        values = self.state_variables()
        values[self._pelvis_speed_idx[1]] = speed
        self.set_state_variables(values, self.state.getTime())

    def set_excitations(self, excitations: np.ndarray) -> None:
        """Set the 18 muscle excitations (already validated and clipped), held constant over the next step."""
        for control, value in zip(self._controls, excitations.tolist(), strict=False):
            control.setValue(value)

    def integrate_step(self) -> None:
        """Advance the state by 0.01 s with a freshly initialised integrator; raise `IntegratorFailure`."""
        manager = self._manager
        try:
            manager.initialize(self.state)
            self.state = manager.integrate(self.state.getTime() + STEP_SECONDS)
        except Exception as exc:  # SimTK errors surface as RuntimeError with a long C++ message
            raise IntegratorFailure(_summarise_simtk_error(exc)) from exc

    # --- reading -------------------------------------------------------------------------------------------
    def state_variables(self) -> np.ndarray:
        """All state variables (coordinates, speeds, muscle activations and fibre lengths) as float64."""
        return self.model.getStateVariableValues(self.state).to_numpy().copy()

    def set_state_variables(self, values: np.ndarray, time: float) -> None:
        """Replace the state by these state variables at this time (bit-exact restore)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.n_state_variables,):
            raise ValueError(f"expected {self.n_state_variables} state variables, got shape {values.shape}")
        state = self.model.initializeState()
        self.model.setStateVariableValues(state, opensim.Vector(values))
        state.setTime(float(time))
        self.state = state

    def observe(self) -> tuple[np.ndarray, float]:
        """The first 36 observation values (up to the talus positions) and the ligament penalty term.

        Raises `IntegratorFailure` if the state is not finite or has exploded.
        """
        model, state = self.model, self.state
        values = model.getStateVariableValues(state).to_numpy()
        if not np.all(np.isfinite(values)) or np.max(np.abs(values)) > EXPLODED:
            raise IntegratorFailure("state is not finite or has exploded")
        model.realizeVelocity(state)
        com_p = model.calcMassCenterPosition(state)
        com_v = model.calcMassCenterVelocity(state)
        obs = np.empty(36)
        obs[0:3] = values[self._pelvis_value_idx]
        obs[3:6] = values[self._pelvis_speed_idx]
        obs[6:12] = values[self._joint_value_idx]
        obs[12:18] = values[self._joint_speed_idx]
        obs[18:22] = (com_p.get(0), com_p.get(1), com_v.get(0), com_v.get(1))
        i = 22
        for body in self._bodies:
            p = body.getPositionInGround(state)
            obs[i] = p.get(0)
            obs[i + 1] = p.get(1)
            i += 2
        ligament = sum(lig.calcLimitForce(state) ** 2 for lig in self._ligaments) ** 0.5
        return obs, ligament
