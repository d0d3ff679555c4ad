"""`lrun export`'s rules on small checkpoints made here (the real path, a trained SAC blend exported, acted with and
started from under mpiexec, is in test_sac_transfer.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrun.checkpoint import CheckpointError, export_checkpoint, load_checkpoint, save_checkpoint
from lrun.learn.blend import new_blend
from lrun.learn.policy import ActorCritic

RESUME_ONLY = {"acting_policy": torch.zeros(3), "torch_rng": torch.get_rng_state(), "numpy_rng": "{}"}


def saved(run_dir, policy, optimizer: dict) -> None:
    """A checkpoint of `policy` at iteration 4 as a run writes it, parts only --resume reads included."""
    meta = {"policy_spec": policy.spec(), "obs_size": policy.obs_size}
    payload = {"meta": meta, "policy": policy.state_dict(), "optimizer": optimizer, "iteration": 4, **RESUME_ONLY}
    save_checkpoint(run_dir, payload, 4)


def test_a_ppo_checkpoint_keeps_its_policy_and_loses_what_only_resume_reads(tmp_path):
    policy = ActorCritic(5, 2, [8])
    saved(tmp_path / "run", policy, torch.optim.Adam(policy.parameters()).state_dict())
    target, notes = export_checkpoint(tmp_path / "run", tmp_path / "models" / "ppo")
    assert target == tmp_path / "models" / "ppo" / "checkpoint.pt" and notes == ["optimiser state left out"]
    out = load_checkpoint(target)
    assert out["optimizer"] == {} and not set(RESUME_ONLY) & set(out)
    assert out["meta"]["exported"]["iteration"] == 4 and out["meta"]["policy_spec"] == policy.spec()
    assert all(torch.equal(v, out["policy"][k]) for k, v in policy.state_dict().items())


def test_a_blend_still_ramping_is_exported_whole(tmp_path):
    frozen, student = ActorCritic(5, 2, [8]), ActorCritic(5, 2, [16])
    blend = new_blend(frozen, np.concatenate([np.zeros(5), np.ones(5), np.full(5, 10.0)]), student)
    blend.set_coefficient(0.5)
    saved(tmp_path / "run", blend, {})
    target, notes = export_checkpoint(tmp_path / "run", tmp_path / "out.pt")
    assert target == tmp_path / "out.pt" and "coefficient 0.5: both networks" in notes[0]
    out = load_checkpoint(target)
    assert out["meta"]["policy_spec"]["kind"] == "blend" and float(out["policy"]["coefficient"]) == 0.5


def test_export_refuses_to_shadow_a_run_overwrite_or_export_twice(tmp_path):
    policy = ActorCritic(5, 2, [8])
    run_dir = tmp_path / "run"
    saved(run_dir, policy, {})
    for target in (run_dir, run_dir / "checkpoints" / "checkpoint.pt", run_dir / "checkpoints" / "other.pt"):
        with pytest.raises(CheckpointError, match=r"its own source|inside a run directory"):
            export_checkpoint(run_dir, target)
    assert not (run_dir / "checkpoint.pt").exists()
    model = tmp_path / "models" / "m"
    export_checkpoint(run_dir, model)
    with pytest.raises(CheckpointError, match="already an exported checkpoint"):
        export_checkpoint(model, tmp_path / "again")
    with pytest.raises(CheckpointError, match="exists: pass --overwrite"):
        export_checkpoint(run_dir, model)
    (model / "eval.json").write_text("{}")
    _, notes = export_checkpoint(run_dir, model, overwrite=True)
    assert any("eval.json scored the checkpoint replaced" in note for note in notes)
