"""The Python API (`lrun.load` -> `Agent`): the README's snippet runs the shipped walker; the agent acts on the
env's own observations, builds its env and the round-2 setting, refuses wrong input in one line; videos recorded
through gymnasium's RecordVideo play in real time whatever the frame skip."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import lrun
from lrun.api import Agent
from lrun.checkpoint import CheckpointError
from lrun.env.features import ACT_SIZE, TASK_SIZE
from lrun.env.wrappers import FrameSkip

ROOT = Path(__file__).resolve().parent.parent
WALK = ROOT / "models" / "walk"


def readme_snippet() -> str:
    """The first python block of the README's 'From Python' section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python: `lrun.load`") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_snippet_walks_the_shipped_walker(monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    # the walker's recorded evaluation: ~17.6 m in the 10 s, no fall (models/walk/PROVENANCE)
    assert namespace["truncated"] and not namespace["terminated"]
    assert namespace["obs"][1] > 15.0
    assert "still up" in printed.getvalue()


def test_an_agent_acts_on_single_and_batched_env_observations_and_says_what_is_wrong():
    agent = lrun.load("walk")  # a shipped model by name
    assert isinstance(agent, Agent) and agent.checkpoint == WALK / "checkpoint.pt"
    assert "trained on lrun/Run-v0: difficulty 0, no obstacles" in repr(agent) and "frame skip 4" in agent.describe()
    env = agent.make_env()
    obs, _ = env.reset(seed=3)
    batch = np.stack([obs, obs * 0.99, obs * 1.01])
    one = agent.act(obs)
    assert one.shape == (ACT_SIZE,) and one.dtype == np.float32 and (one >= 0).all() and (one <= 1).all()
    many = agent.act(batch)
    assert many.shape == (3, ACT_SIZE)
    np.testing.assert_allclose(many[0], one, atol=1e-6)
    assert not np.allclose(many[1], many[2])  # each row acts on its own observation
    action, state = agent.predict(obs)
    np.testing.assert_array_equal(action, one)
    assert state is None
    with pytest.raises(ValueError, match=r"expected one observation of 41 values .* got shape \(38,\)"):
        agent.act(obs[:38])
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 41\)"):
        agent.act(np.zeros((2, 3, TASK_SIZE)))
    bad = obs.copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        agent.act(bad)
    env.close()


def test_an_agent_builds_its_training_env_and_the_round2_setting():
    agent = lrun.load(WALK)
    trained = agent.make_env()
    inner = trained.unwrapped
    assert isinstance(trained, FrameSkip) and trained.skip == 4
    assert inner.difficulty == 0
    r2 = agent.make_env("round2")
    assert r2.skip == 4 and r2.unwrapped.difficulty == 2 and r2.unwrapped.max_obstacles == 10
    spec = agent.env_kwargs("round2")
    assert spec["physics"] == "graders-2017" and spec["kwargs"]["weakening"] == "graders-2017"
    assert agent.env_kwargs(physics="accurate", max_obstacles=3)["physics"] == "accurate"
    with pytest.raises(ValueError, match="unknown setting 'round3': choose one of round2, flat"):
        agent.make_env("round3")
    for env in (trained, r2):
        env.close()


def test_loading_nothing_or_a_foreign_file_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*shipped models: .*walk"):
        lrun.load(tmp_path / "nothing-here")
    foreign = tmp_path / "x.pt"
    foreign.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint"):
        lrun.load(foreign)


def test_frame_skip_divides_the_render_rate_so_recordings_keep_real_time():
    env = FrameSkip(gym.make("Pendulum-v1", render_mode="rgb_array"), 4)
    assert env.metadata["render_fps"] == pytest.approx(30 / 4)
    assert env.unwrapped.metadata["render_fps"] == 30  # the env's own class data is untouched
    env.close()


def test_record_video_of_the_walker_plays_in_real_time(tmp_path):
    pytest.importorskip("moviepy")
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    agent = lrun.load("walk")
    decisions = 50  # x frame skip 4 x 0.01 s = 2 s simulated
    videos = tmp_path / "videos"
    env = gym.wrappers.RecordVideo(
        agent.make_env(render_mode="rgb_array"), str(videos), episode_trigger=lambda _: True, disable_logger=True
    )
    obs, _ = env.reset(seed=0)
    for _ in range(decisions):
        obs, *_ = env.step(agent.act(obs))
    env.close()  # writes the video of the unfinished episode
    (video,) = videos.glob("*.mp4")
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    frames = sum(1 for _ in reader)
    assert meta["fps"] == pytest.approx(25.0)
    assert frames == decisions + 1  # the reset's frame and one per decision
    assert frames / meta["fps"] == pytest.approx(decisions * 4 * 0.01, abs=0.05)  # plays for the simulated time
