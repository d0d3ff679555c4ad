"""Named task settings (plain data): what a result is scored on, so that figures are compared like with like.

`round2` is the 2017 Learning to Run round 2 as its graders ran it (stanfordnmbl/osim-rl 48494f5): difficulty 2,
10 obstacles (`RunEnv(difficulty=2, max_obstacles=10)`), OpenSim's default integrator (`graders-2017` physics:
a new Manager per step, no accuracy set), the muscles at indices 3 and 11 of the muscle set weakened
(`graders-2017` weakening: iliopsoas_r and glut_max_l), strengths max(0.5, 1 - N(0, 0.1)) per side, 1000 steps
of 0.01 s. The 2017 results (l2r-2017.md) are quoted beside results of this setting only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lrun.env.physics import ALIASES


@dataclass(frozen=True)
class TaskSetting:
    """The task variant an episode runs in."""

    difficulty: int
    obstacles: int
    physics: str
    weakening: str

    def to_dict(self) -> dict:
        """Plain data, for eval.json."""
        return asdict(self)

    def canonical(self) -> TaskSetting:
        """The same task with what does not change it set aside: obstacles at difficulty 0, the weakening below
        difficulty 2 (both made empty), and earlier physics names as the presets they name."""
        return TaskSetting(
            difficulty=self.difficulty,
            obstacles=self.obstacles if self.difficulty != 0 else 0,
            physics=ALIASES.get(self.physics, self.physics),
            weakening=self.weakening if self.difficulty >= 2 else "",
        )


SETTINGS: dict[str, TaskSetting] = {
    "round2": TaskSetting(difficulty=2, obstacles=10, physics="graders-2017", weakening="graders-2017"),
    "flat": TaskSetting(difficulty=0, obstacles=0, physics="graders-2017", weakening="graders-2017"),
}

#: The 2017 figures a round-2 result is compared with (l2r-2017.md).
ROUND2_2017 = (
    "2017 round 2 (same setting; l2r-2017.md): winner ~43 m mean distance with 8-10 % falls; deepsense.ai < 8 % "
    "falls, < 0.5 % when ~20 % slower"
)


def setting_name(difficulty: int, obstacles: int, physics: str, weakening: str) -> str:
    """The name of the setting these values make, or "" when they make none. Obstacles do not matter at
    difficulty 0, nor weakening below difficulty 2; earlier physics names count as the presets they name."""
    task = TaskSetting(difficulty, obstacles, physics, weakening).canonical()
    return next((name for name, s in SETTINGS.items() if s.canonical() == task), "")
