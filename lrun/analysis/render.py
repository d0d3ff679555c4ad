"""Stick-figure pictures of a stored Learning to Run episode: an animated GIF, an MP4 video or a strip of frames
(PNG), drawn from the stored observations by the env's own stick figure (`lrun.env.stick_figure`, which
`RunEnv(render_mode="rgb_array")` draws its frames with).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lrun.analysis.common import save_figure
from lrun.env import ENV_ID
from lrun.env.stick_figure import StickFigureCanvas, draw
from lrun.store.reader import RunStore, StoreError


def load_episode(run_dir: str | Path, episode_id: int) -> tuple[np.ndarray, dict]:
    """Stored observations (with the final one) and the episode row; checks it is a RunEnv episode."""
    with RunStore(run_dir) as store:
        episode = store.episode(episode_id)
    row = episode["row"]
    obs = np.concatenate([episode["steps"]["obs"], row["final_obs"][None]])
    if obs.shape[1] != 41:
        raise StoreError(f"episode {episode_id}: rendering needs {ENV_ID} observations (41), got {obs.shape[1]}")
    return obs, row


def observation_times(row: dict, n_obs: int) -> np.ndarray:
    """Simulated time (s) of each stored observation of an episode: a decision lasts frame_skip steps of
    0.01 s, and the last may be cut short where the episode ended (episodes/sim_steps says by how much)."""
    skip = int(row.get("frame_skip", 1)) or 1
    times = np.arange(n_obs) * skip * 0.01
    if "sim_steps" in row and n_obs > 1:
        times[-1] = int(row["sim_steps"]) * 0.01
    return times


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
        draw(ax, obs[k], obstacles, float(obs[k][1]), f"episode {episode_id}  t={times[k]:.2f} s  x={obs[k][1]:.2f} m")

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
        draw(ax, obs[k], obstacles, float(obs[k][1]), f"t={times[k]:.2f} s")
    skip = int(row.get("frame_skip", 1))
    decisions = f" ({len(obs) - 1} decisions)" if skip > 1 else ""
    fig.suptitle(
        f"episode {episode_id}: {times[-1]:.2f} s simulated{decisions}, distance {row['distance']:.2f} m", fontsize=10
    )
    return save_figure(fig, out, dpi=90)
