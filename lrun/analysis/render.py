"""Stick-figure pictures of a stored Learning to Run episode: an animated GIF or a strip of frames (PNG).

Everything is drawn from the stored observations: head, torso, pelvis, tali (ankles) and toes are observed;
hips sit at a fixed offset from the pelvis origin, and knees are placed by two-link inverse kinematics from
hip and ankle with the model's thigh and shank lengths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lrun.analysis.report import save_figure
from lrun.store.reader import RunStore, StoreError

HIP_OFFSET = np.array([-0.0707, -0.0661])  # hip centre in the pelvis frame (gait9dof18musc)
THIGH = 0.40  # hip to knee (m)
SHANK = 0.43  # knee to ankle (m)


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def knee(hip: np.ndarray, ankle: np.ndarray) -> np.ndarray:
    """Knee position from hip and ankle by two-link IK, bending forward (+x), as human knees do."""
    d = ankle - hip
    dist = float(np.clip(np.linalg.norm(d), 1e-6, THIGH + SHANK - 1e-6))
    a = (THIGH**2 - SHANK**2 + dist**2) / (2 * dist)
    h = np.sqrt(max(THIGH**2 - a**2, 0.0))
    unit = d / max(np.linalg.norm(d), 1e-9)
    base = hip + a * unit
    normal = np.array([-unit[1], unit[0]])
    candidates = (base + h * normal, base - h * normal)
    return max(candidates, key=lambda p: p[0])


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
    points["knee_l"] = knee(hip, points["talus_l"])
    points["knee_r"] = knee(hip, points["talus_r"])
    return points


def load_episode(run_dir: str | Path, episode_id: int) -> tuple[np.ndarray, dict]:
    """Stored observations (with the final one) and the episode row; checks it is a RunEnv episode."""
    with RunStore(run_dir) as store:
        episode = store.episode(episode_id)
    row = episode["row"]
    obs = np.concatenate([episode["steps"]["obs"], row["final_obs"][None]])
    if obs.shape[1] != 41:
        raise StoreError(f"episode {episode_id}: rendering needs lrun/Run-v0 observations (41), got {obs.shape[1]}")
    return obs, row


def observation_times(row: dict, n_obs: int) -> np.ndarray:
    """Simulated time (s) of each stored observation of an episode: a decision lasts frame_skip steps of
    0.01 s, and the last may be cut short where the episode ended (episodes/sim_steps says by how much)."""
    skip = int(row.get("frame_skip", 1)) or 1
    times = np.arange(n_obs) * skip * 0.01
    if "sim_steps" in row and n_obs > 1:
        times[-1] = int(row["sim_steps"]) * 0.01
    return times


def _draw(ax, obs: np.ndarray, obstacles: np.ndarray, x_centre: float, title: str) -> None:
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
        _draw(self.ax, obs, obstacles, float(obs[1]), title)
        self.figure.canvas.draw()
        return np.asarray(self.figure.canvas.buffer_rgba())[..., :3].copy()


def render_gif(run_dir: str | Path, episode_id: int, out: str | Path, stride: int = 2, fps: int = 25) -> Path:
    """Animated GIF of the episode (every `stride`-th step), camera following the pelvis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter

    obs, row = load_episode(run_dir, episode_id)
    obstacles = row["obstacles"][: int(row["n_obstacles"])]
    frames = list(range(0, len(obs), max(stride, 1)))
    times = observation_times(row, len(obs))
    fig, ax = plt.subplots(figsize=(4, 3.6))

    def update(k: int) -> None:
        _draw(ax, obs[k], obstacles, float(obs[k][1]), f"episode {episode_id}  t={times[k]:.2f} s  x={obs[k][1]:.2f} m")

    animation = FuncAnimation(fig, update, frames=frames)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    animation.save(out, writer=PillowWriter(fps=fps))
    plt.close(fig)
    return out


def video_encoder_available() -> bool:
    """Whether MP4 can be written (the imageio-ffmpeg package, which brings its own ffmpeg)."""
    import importlib.util

    return importlib.util.find_spec("imageio_ffmpeg") is not None


def render_mp4(run_dir: str | Path, episode_id: int, out: str | Path, stride: int = 1) -> Path:
    """MP4 video of the episode in real time (every `stride`-th observation; H.264 through imageio-ffmpeg),
    camera on the pelvis."""
    import imageio_ffmpeg

    obs, row = load_episode(run_dir, episode_id)
    obstacles = row["obstacles"][: int(row["n_obstacles"])]
    times = observation_times(row, len(obs))
    interval = float(times[1] - times[0]) * max(stride, 1) if len(times) > 1 else 0.04
    fps = max(1.0, 1.0 / interval)  # real time: a 10 s episode plays for 10 s
    canvas = StickFigureCanvas()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for k in range(0, len(obs), max(stride, 1)):
        frame = canvas.frame(obs[k], obstacles, f"episode {episode_id}  t={times[k]:.2f} s  x={obs[k][1]:.2f} m")
        if writer is None:
            writer = imageio_ffmpeg.write_frames(str(out), (frame.shape[1], frame.shape[0]), fps=fps, quality=7)
            writer.send(None)  # start the generator
        writer.send(np.ascontiguousarray(frame))
    if writer is not None:
        writer.close()
    return out


def render_strip(run_dir: str | Path, episode_id: int, out: str | Path, frames: int = 8) -> Path:
    """One PNG: `frames` evenly spaced snapshots of the episode side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs, row = load_episode(run_dir, episode_id)
    obstacles = row["obstacles"][: int(row["n_obstacles"])]
    picks = np.linspace(0, len(obs) - 1, num=min(frames, len(obs))).astype(int)
    times = observation_times(row, len(obs))
    fig, axes = plt.subplots(1, len(picks), figsize=(2.2 * len(picks), 2.6))
    for ax, k in zip(np.atleast_1d(axes), picks):
        _draw(ax, obs[k], obstacles, float(obs[k][1]), f"t={times[k]:.2f} s")
    skip = int(row.get("frame_skip", 1))
    decisions = f" ({len(obs) - 1} decisions)" if skip > 1 else ""
    fig.suptitle(
        f"episode {episode_id}: {times[-1]:.2f} s simulated{decisions}, distance {row['distance']:.2f} m", fontsize=10
    )
    return save_figure(fig, out, dpi=90)
