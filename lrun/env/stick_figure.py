"""The stick figure of a Learning to Run observation: `RunEnv(render_mode="rgb_array")` draws its frames with it,
and `lrun render` (`lrun.analysis.render`) its GIFs, videos and frame strips.

Everything is drawn from an observation: head, torso, pelvis, tali (ankles) and toes are observed; hips sit at a
fixed offset from the pelvis origin, and knees are placed by two-link inverse kinematics from hip and ankle with
the model's thigh and shank lengths, on the side the observed knee angle says: flexed (negative in the model)
forwards, hyperextended (positive: the knee locked backwards against its ligament) backwards. numpy only until
a frame is drawn (then matplotlib, without pyplot).
"""

from __future__ import annotations

import numpy as np

from lrun.env.shaping import KNEE_ANGLES

HIP_OFFSET = np.array([-0.0707, -0.0661])  # hip centre in the pelvis frame (gait9dof18musc)
THIGH = 0.40  # hip to knee (m)
SHANK = 0.43  # knee to ankle (m)


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def knee(hip: np.ndarray, ankle: np.ndarray, angle: float = -1.0) -> np.ndarray:
    """Knee position from hip and ankle by two-link IK, on the side the knee's angle (rad) bends it to.

    The two solutions mirror each other about the hip-ankle line. A flexed knee (angle < 0, as in the model)
    turns the leg clockwise from thigh to shank in the (x forwards, y up) plane: the knee ahead of the line for a
    walker facing +x; a hyperextended one (angle > 0) turns it the other way, the knee behind the line."""
    d = ankle - hip
    dist = float(np.clip(np.linalg.norm(d), 1e-6, THIGH + SHANK - 1e-6))
    a = (THIGH**2 - SHANK**2 + dist**2) / (2 * dist)
    h = np.sqrt(max(THIGH**2 - a**2, 0.0))
    unit = d / max(np.linalg.norm(d), 1e-9)
    base = hip + a * unit
    normal = np.array([-unit[1], unit[0]])
    candidates = (base + h * normal, base - h * normal)

    def turn(k: np.ndarray) -> float:  # z of (knee - hip) x (ankle - knee): < 0 clockwise, a flexed knee
        t, s = k - hip, ankle - k
        return float(t[0] * s[1] - t[1] * s[0])

    want = -1.0 if angle <= 0.0 else 1.0
    return max(candidates, key=lambda k: want * turn(k))


def skeleton(obs: np.ndarray) -> dict[str, np.ndarray]:
    """Joint positions (x, y) for one observation of RunEnv."""
    tilt = float(obs[0])
    pelvis = obs[24:26]
    points = {
        "head": obs[22:24],
        "pelvis": pelvis,
        "torso": obs[26:28],
        "toes_l": obs[28:30],
        "toes_r": obs[30:32],
        "talus_l": obs[32:34],
        "talus_r": obs[34:36],
    }
    hip = pelvis + _rotate(HIP_OFFSET, tilt)
    points["hip"] = hip
    knee_r, knee_l = (float(obs[i]) for i in KNEE_ANGLES)
    points["knee_l"] = knee(hip, points["talus_l"], knee_l)
    points["knee_r"] = knee(hip, points["talus_r"], knee_r)
    return points


def draw(ax, obs: np.ndarray, obstacles: np.ndarray, x_centre: float, title: str) -> None:
    """Draw one observation of RunEnv (and its obstacles) into a matplotlib axes, centred on `x_centre`."""
    from matplotlib.patches import Circle

    p = skeleton(obs)
    ax.clear()
    ax.set_xlim(x_centre - 1.2, x_centre + 1.2)
    ax.set_ylim(-0.15, 1.9)
    ax.set_aspect("equal")
    ax.axhline(0.0, color="0.35", lw=1.5)
    for x, y, r in obstacles:
        ax.add_patch(Circle((x, y), r, color="0.55"))
    for side, colour in (("l", "tab:blue"), ("r", "tab:red")):
        chain = [p["hip"], p[f"knee_{side}"], p[f"talus_{side}"], p[f"toes_{side}"]]
        ax.plot(*np.array(chain).T, color=colour, lw=3, solid_capstyle="round")
    trunk = [p["hip"], p["pelvis"], p["torso"], p["head"]]
    ax.plot(*np.array(trunk).T, color="0.15", lw=4, solid_capstyle="round")
    ax.add_patch(Circle(p["head"], 0.09, color="0.15"))
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


class StickFigureCanvas:
    """Draws single frames of the stick figure into RGB arrays (for `RunEnv(render_mode="rgb_array")`, and so for
    gymnasium's RecordVideo, SB3's VecVideoRecorder and CleanRL's capture_video)."""

    def __init__(self, width: int = 400, height: int = 352) -> None:  # multiples of 16: H.264 blocks
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure  # no pyplot: no global figure registry, nothing left open

        dpi = 100
        self.figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.ax = self.figure.add_subplot()

    def frame(self, obs: np.ndarray, obstacles: np.ndarray, title: str = "") -> np.ndarray:
        """One (height, width, 3) uint8 frame, the camera on the pelvis."""
        draw(self.ax, obs, obstacles, float(obs[1]), title)
        self.figure.canvas.draw()
        return np.asarray(self.figure.canvas.buffer_rgba())[..., :3].copy()
