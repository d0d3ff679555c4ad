"""What an episode looks like before it starts: obstacles and psoas strengths (pure numpy).

Draws follow the 2017 grader (osim-rl `generate_env`) in kind and order, but from the episode's own
`numpy.random.Generator` instead of numpy's global one, so every env instance is reproducible on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Which muscles difficulty 2's two strengths (observation order: left, right) scale, by setting:
#: `graders-2017` is what the 2017 grader did: indices MUSCLES_PSOAS_L = 11 and MUSCLES_PSOAS_R = 3 of the
#: muscle set (stanfordnmbl/osim-rl 48494f5, osim/env/run.py), which in gait9dof18musc are glut_max_l and
#: iliopsoas_r; `psoas` weakens both psoas muscles, as the observation's name says.
WEAKENING: dict[str, tuple[int | str, int | str]] = {
    "graders-2017": (11, 3),
    "psoas": ("iliopsoas_l", "iliopsoas_r"),
}
#: The 2017 grader drew at most this many obstacles, whatever max_obstacles (min(20, max_obstacles) in its
#: generate_env).
MAX_DRAWN_OBSTACLES = 20
#: Obstacle radius = 0.05 m + Exp(scale): the 2017 grader's scale (its median radius is 0.085 m, and 5 % of its
#: obstacles are 0.2 m or more).
GRADERS_RADIUS_SCALE = 0.05
#: Observation slots for "no obstacle ahead": x relative to pelvis, y, radius.
NO_OBSTACLE = (100.0, 0.0, 0.0)


@dataclass(frozen=True)
class EpisodeLayout:
    """Obstacles (rows of absolute x, y, radius; sorted by x) and psoas strengths (left, right)."""

    obstacles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    psoas: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        obstacles = np.asarray(self.obstacles, dtype=np.float64).reshape(-1, 3)
        object.__setattr__(self, "obstacles", obstacles)
        object.__setattr__(self, "psoas", (float(self.psoas[0]), float(self.psoas[1])))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EpisodeLayout):
            return NotImplemented
        return self.psoas == other.psoas and np.array_equal(self.obstacles, other.obstacles)

    __hash__ = None  # type: ignore[assignment]  # mutable array inside: not hashable

    def next_obstacle(self, pelvis_x: float) -> tuple[float, float, float]:
        """The first obstacle not yet passed (x + radius >= pelvis x): (x - pelvis x, y, radius)."""
        for x, y, r in self.obstacles:
            if x + r >= pelvis_x:
                return (x - pelvis_x, y, r)
        return NO_OBSTACLE

    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain-data form for snapshots and storage."""
        return {"obstacles": self.obstacles.copy(), "psoas": np.array(self.psoas)}

    @classmethod
    def from_dict(cls, data: dict) -> EpisodeLayout:
        """Inverse of `to_dict`."""
        return cls(np.asarray(data["obstacles"]), tuple(np.asarray(data["psoas"]).tolist()))


def draw_layout(
    rng: np.random.Generator, difficulty: int, max_obstacles: int, radius_scale: float = GRADERS_RADIUS_SCALE
) -> EpisodeLayout:
    """Draw one episode's layout as the 2017 task specifies.

    difficulty 0: no obstacles; 1: min(3, max_obstacles) obstacles at x ~ U(1, 5), radius 0.05 + Exp(0.05),
    y = U(-0.25, 0.25) * radius, then further ones at 5 + cumsum(U(2, 4)) with y = U(-0.05, 0.25) * radius;
    2: as 1 plus psoas strength max(0.5, 1 - N(0, 0.1)) per side (right drawn first, as in 2017). At most 20
    obstacles are drawn (the 2017 cap), whatever max_obstacles. `radius_scale` replaces the exponential's 0.05
    (a training aid: more big obstacles); the draws, and so every other part of the layout, stay the same.
    """
    if difficulty not in (0, 1, 2):
        raise ValueError(f"difficulty must be 0, 1 or 2, got {difficulty!r}")
    if max_obstacles < 0:
        raise ValueError(f"max_obstacles must be >= 0, got {max_obstacles!r}")
    xs = ys = rs = np.zeros(0)
    if difficulty > 0 and max_obstacles > 0:
        n_first = min(3, max_obstacles)
        xs = rng.uniform(1.0, 5.0, n_first)
        ys = rng.uniform(-0.25, 0.25, n_first)
        rs = 0.05 + rng.exponential(radius_scale, n_first)
        n_extra = max(min(MAX_DRAWN_OBSTACLES, max_obstacles) - n_first, 0)
        if n_extra > 0:
            xs = np.concatenate([xs, 5.0 + np.cumsum(rng.uniform(2.0, 4.0, n_extra))])
            ys = np.concatenate([ys, rng.uniform(-0.05, 0.25, n_extra)])
            rs = np.concatenate([rs, 0.05 + rng.exponential(radius_scale, n_extra)])
    obstacles = np.stack([xs, ys * rs, rs], axis=1) if xs.size else np.zeros((0, 3))
    obstacles = obstacles[np.argsort(obstacles[:, 0], kind="stable")]
    psoas = (1.0, 1.0)
    if difficulty >= 2:
        right = max(0.5, 1.0 - rng.normal(0.0, 0.1))
        left = max(0.5, 1.0 - rng.normal(0.0, 0.1))
        psoas = (left, right)
    return EpisodeLayout(obstacles, psoas)
