"""`RunEnv`: the NIPS 2017 Learning to Run task as a `gymnasium.Env` (registered as `lrun/Run-v0`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from lrun.env.features import TASK_NAMES
from lrun.env.layout import GRADERS_RADIUS_SCALE, EpisodeLayout, draw_layout
from lrun.env.model import GaitModel, IntegratorFailure
from lrun.env.physics import STEP_SECONDS, Physics, resolve_physics
from lrun.env.stick_figure import StickFigureCanvas

OBSERVATION_SIZE = 41
N_MUSCLES = 18
MAX_EPISODE_STEPS = 1000
FALL_HEIGHT = 0.65
LIGAMENT_WEIGHT = 1e-7
SNAPSHOT_KEYS = frozenset({"state_variables", "time", "obstacles", "psoas", "step", "difficulty", "max_obstacles"})


#: m: the largest `obstacle_radius_scale` (at 0.5 the median obstacle is 0.4 m, as high as the knee)
MAX_RADIUS_SCALE = 0.5


def check_radius_scale(value: Any) -> float:
    """`obstacle_radius_scale` in metres; ValueError unless 0 < value <= MAX_RADIUS_SCALE."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= MAX_RADIUS_SCALE:
        raise ValueError(f"obstacle_radius_scale must be a number of metres in (0, {MAX_RADIUS_SCALE}], got {value!r}")
    return float(value)


#: m/s: the fastest push `init_speed` may give (a sprint is ~10 m/s; beyond this the start is a crash)
MAX_INIT_SPEED = 5.0


def check_init_speed(value: Any) -> tuple[float, float]:
    """`init_speed` as a (low, high) range in m/s; ValueError unless 0 <= low <= high <= MAX_INIT_SPEED."""
    bounds = [value, value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        low, high = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"init_speed must be a speed or a [low, high] range in m/s, got {value!r}") from None
    if not (0.0 <= low <= high <= MAX_INIT_SPEED):
        raise ValueError(f"init_speed {value!r}: need 0 <= low <= high <= {MAX_INIT_SPEED} m/s")
    return low, high


class RunEnv(gym.Env):
    """Drive the 18 muscles of `gait9dof18musc` to run as far as possible in 10 s.

    Observation (41 floats): pelvis tilt, x, y; their speeds; hip, knee, ankle angles (right, then left) and their
    speeds; centre of mass x, y and its velocity; x, y of head, pelvis, torso, toes_l, toes_r, talus_l, talus_r;
    psoas strength left, right; next obstacle (x relative to pelvis, y, radius) or (100, 0, 0).
    Action: 18 excitations in the model's muscle order, clipped to [0, 1].
    Reward: pelvis x advance minus 1e-7 * sqrt(sum of squared ligament forces).
    `terminated` when pelvis y < 0.65 or the integrator fails; `truncated` after 1000 steps.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 100}
    #: named reward components reported in `info` (and stored per step)
    reward_terms: ClassVar[tuple[str, ...]] = ("delta_x", "ligament_penalty")

    def __init__(
        self,
        difficulty: int = 0,
        max_obstacles: int = 3,
        physics: Physics | str | dict | None = None,
        model_file: str | None = None,
        fault_every: int = 0,
        init_speed: float | Sequence[float] = 0.0,
        render_mode: str | None = None,
        weakening: str = "graders-2017",
        obstacle_radius_scale: float = GRADERS_RADIUS_SCALE,
    ) -> None:
        """`fault_every` > 0 is fault injection for tests and drills (`env.kwargs = {fault_every = N}`): every
        N-th step of an episode starts from a state with a NaN velocity, which OpenSim's integration and lrun's
        failure handling then meet as they would a real blow-up.

        `init_speed` (m/s, a number or a [low, high] range drawn uniformly per episode) is a training aid: the
        whole body starts moving forwards at that speed, a push the feet slip out of and the policy must step
        out of or fall. The task itself starts at rest (0, the default, which `lrun eval` always uses).

        `weakening` (difficulty 2): which two muscles the drawn strengths scale: `graders-2017` (the default) as
        the 2017 grader did, muscle-set indices 11 and 3 (`glut_max_l` for the "left psoas" slot, `iliopsoas_r`
        for the right); `psoas` scales `iliopsoas_l` and `iliopsoas_r`, as the observation's name says.

        `obstacle_radius_scale` (m) is a training aid too: obstacle radii are 0.05 m + Exp(this scale), 0.05 as the
        2017 grader drew them (and `lrun eval` always does); 0.1 makes 22 % of obstacles 0.2 m or more, not 5 %.

        `render_mode="rgb_array"`: `render()` returns the stick figure `lrun render` draws (obstacles included)
        as an RGB array, for gymnasium's RecordVideo and the like."""
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self._canvas = None
        if difficulty not in (0, 1, 2):
            raise ValueError(f"difficulty must be 0, 1 or 2, got {difficulty!r}")
        if not isinstance(max_obstacles, int) or max_obstacles < 0:
            raise ValueError(f"max_obstacles must be a non-negative int, got {max_obstacles!r}")
        self.difficulty = difficulty
        self.max_obstacles = max_obstacles
        if not isinstance(fault_every, int) or fault_every < 0:
            raise ValueError(f"fault_every must be a non-negative int, got {fault_every!r}")
        self.fault_every = fault_every
        self.init_speed = check_init_speed(init_speed)
        self.radius_scale = check_radius_scale(obstacle_radius_scale)
        self.physics = resolve_physics(physics)
        self.sim = GaitModel(max_obstacles, self.physics, model_file, weakening)
        self.weakening = weakening
        self.muscle_names = self.sim.muscle_names
        self.observation_names = TASK_NAMES
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBSERVATION_SIZE,), np.float64)
        self.action_space = gym.spaces.Box(0.0, 1.0, (N_MUSCLES,), np.float32)
        self.layout = EpisodeLayout()
        self.step_count = 0
        self._obs: np.ndarray | None = None
        self._done = True
        self._broken_state = ""

    # --- gymnasium API ----------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode: draw the layout from this instance's generator (seeded by `seed`), default pose.

        `options={"layout": EpisodeLayout(...)}` imposes a layout instead of drawing one (tests, studies).
        """
        super().reset(seed=seed)
        options = dict(options or {})
        layout = options.pop("layout", None)
        if options:
            raise ValueError(f"unknown reset option(s) {sorted(options)}; RunEnv.reset knows only 'layout'")
        if layout is None:
            layout = draw_layout(self.np_random, self.difficulty, self.max_obstacles, self.radius_scale)
        elif not isinstance(layout, EpisodeLayout):
            layout = EpisodeLayout.from_dict(layout)
        if len(layout.obstacles) > self.max_obstacles:
            raise ValueError(f"layout has {len(layout.obstacles)} obstacles, max_obstacles is {self.max_obstacles}")
        self.layout = layout
        self.sim.apply_layout(self.layout)
        self.sim.reset_state()
        low, high = self.init_speed
        if high > 0.0:
            self.sim.set_forward_speed(float(self.np_random.uniform(low, high)) if high > low else low)
        self.step_count = 0
        self._obs = self._observe()[0]
        self._done = False
        self._broken_state = ""
        return self._obs.copy(), {"layout": self.layout}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Hold the excitations for 0.01 s. Raises ValueError for a wrong shape or NaN."""
        if self._done:
            raise RuntimeError("step() called on a finished episode: call reset() first")
        excitations = self._validate_action(action)
        previous_x = self._obs[1]
        if self.fault_every and (self.step_count + 1) % self.fault_every == 0:
            snapshot = self.get_state()
            snapshot["state_variables"][1] = np.nan  # pelvis tilt speed
            self.set_state(snapshot)
        self.sim.set_excitations(excitations)
        self.step_count += 1
        try:
            if self._broken_state:
                # never integrate a non-finite or exploded state: the error control would shrink the step to
                # its minimum and grind for seconds
                raise IntegratorFailure(self._broken_state)
            self.sim.integrate_step()
            obs, ligament = self._observe()
        except IntegratorFailure as failure:
            # The episode ends; the process and the env live on. The last good observation is returned so
            # learners never see NaN.
            self._done = True
            info = {"integrator_failure": True, "failure": str(failure), "delta_x": 0.0, "ligament_penalty": 0.0}
            return self._obs.copy(), 0.0, True, False, info
        delta_x = obs[1] - previous_x
        penalty = LIGAMENT_WEIGHT * ligament
        self._obs = obs
        terminated = bool(obs[2] < FALL_HEIGHT)
        truncated = not terminated and self.step_count >= MAX_EPISODE_STEPS
        self._done = terminated or truncated
        info = {"integrator_failure": False, "delta_x": float(delta_x), "ligament_penalty": penalty}
        return obs.copy(), float(delta_x - penalty), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The current state as an RGB frame (render_mode="rgb_array"), else None."""
        if self.render_mode != "rgb_array":
            return None
        if self._obs is None:
            raise RuntimeError("render() before the first reset()")
        if self._canvas is None:  # matplotlib only where frames are wanted
            self._canvas = StickFigureCanvas()
        title = f"t={self.step_count * STEP_SECONDS:.2f} s  x={self._obs[1]:.2f} m"
        return self._canvas.frame(self._obs, self.layout.obstacles, title)

    # --- snapshots ------------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """A plain numpy/dict snapshot of the whole episode state; `set_state` restores it bit-exactly."""
        if self.sim.state is None:
            raise RuntimeError("get_state() before the first reset()")
        return {
            "state_variables": self.sim.state_variables(),
            "time": float(self.sim.state.getTime()),
            "obstacles": self.layout.obstacles.copy(),
            "psoas": np.array(self.layout.psoas),
            "step": self.step_count,
            "difficulty": self.difficulty,
            "max_obstacles": self.max_obstacles,
        }

    def set_state(self, snapshot: dict[str, Any]) -> np.ndarray:
        """Restore a snapshot from `get_state` (of this or another instance); returns the observation."""
        missing = SNAPSHOT_KEYS - set(snapshot)
        if missing:
            raise ValueError(f"snapshot lacks {sorted(missing)}")
        layout = EpisodeLayout(snapshot["obstacles"], tuple(np.asarray(snapshot["psoas"]).tolist()))
        if len(layout.obstacles) > self.max_obstacles:
            raise ValueError(
                f"snapshot has {len(layout.obstacles)} obstacles but this env has max_obstacles={self.max_obstacles}"
            )
        self.sim.apply_layout(layout)
        self.sim.set_state_variables(snapshot["state_variables"], snapshot["time"])
        self.layout = layout
        self.difficulty = int(snapshot["difficulty"])
        self.step_count = int(snapshot["step"])
        self._broken_state = ""
        try:
            self._obs = self._observe()[0]
            self._done = self.step_count >= MAX_EPISODE_STEPS or bool(self._obs[2] < FALL_HEIGHT)
        except IntegratorFailure as failure:
            # A broken snapshot can be restored (to study it); its first step ends the episode.
            self._broken_state = f"restored state is broken: {failure}"
            self._obs = np.zeros(OBSERVATION_SIZE)
            self._done = False
        return self._obs.copy()

    # --- helpers ---------------------------------------------------------------------------------------------
    def _validate_action(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (N_MUSCLES,):
            raise ValueError(f"action must have shape ({N_MUSCLES},) (one excitation per muscle), got {a.shape}")
        if np.isnan(a).any():
            bad = [self.muscle_names[i] for i in np.flatnonzero(np.isnan(a))]
            raise ValueError(f"action contains NaN for muscle(s) {', '.join(bad)}")
        return np.clip(a, 0.0, 1.0)

    def _observe(self) -> tuple[np.ndarray, float]:
        body, ligament = self.sim.observe()
        obs = np.empty(OBSERVATION_SIZE)
        obs[:36] = body
        obs[36:38] = self.layout.psoas
        obs[38:41] = self.layout.next_obstacle(body[1])
        return obs, ligament
