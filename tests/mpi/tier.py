"""What the collective tests share: the tier's tiny training config (Pendulum, seconds per run)."""

from __future__ import annotations

from lrun.config import TrainConfig, build_config


def tiny_config(tmp_dir: str, **overrides: str) -> TrainConfig:
    """Two short iterations of Pendulum in `tmp_dir`, with `section.key=value` overrides."""
    items = {
        "env.id": "gymnasium:Pendulum-v1",
        "layout.envs_per_rank": "2",
        "ppo.steps_per_env": "32",
        "ppo.minibatches": "4",
        "ppo.epochs": "2",
        "run.iterations": "2",
        "run.checkpoint_every": "1",
        "run.run_dir": tmp_dir,
        "run.sync_check_every": "1",
        **overrides,
    }
    return build_config({}, [f"{k}={v}" for k, v in items.items()])
