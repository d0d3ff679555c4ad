"""Running mean and variance of observations, mergeable across ranks from [sum, sum of squares, count]."""

from __future__ import annotations

import numpy as np


class RunningNormaliser:
    """Normalise observations by running statistics; clip to +-`clip` standard deviations.

    Statistics are updated from moment sums, so that every rank can contribute its local sums to one
    Allreduce and all ranks end up with identical statistics.
    """

    def __init__(self, size: int, clip: float = 10.0, epsilon: float = 1e-8) -> None:
        self.size = size
        self.clip = clip
        self.epsilon = epsilon
        self.mean = np.zeros(size)
        self.var = np.ones(size)
        self.count = 0.0

    @staticmethod
    def moments(batch: np.ndarray) -> np.ndarray:
        """Flat [sum, sum of squares, count] of a batch of observations (rows), as float64."""
        batch = np.asarray(batch, dtype=np.float64).reshape(-1, batch.shape[-1])
        return np.concatenate([batch.sum(axis=0), np.square(batch).sum(axis=0), [float(len(batch))]])

    def update_from_moments(self, moments: np.ndarray) -> None:
        """Fold in [sum, sum of squares, count] (possibly summed over many ranks)."""
        n = self.size
        total, total_sq, count = moments[:n], moments[n : 2 * n], float(moments[2 * n])
        if count <= 0:
            return
        batch_mean = total / count
        batch_var = np.maximum(total_sq / count - np.square(batch_mean), 0.0)
        new_count = self.count + count
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * count / new_count
        m2 = self.var * self.count + batch_var * count + np.square(delta) * self.count * count / new_count
        self.var = m2 / new_count
        self.count = new_count

    def update(self, batch: np.ndarray) -> None:
        """Fold in a local batch of observations."""
        self.update_from_moments(self.moments(batch))

    def normalise(self, obs: np.ndarray, clip: bool = True) -> np.ndarray:
        """(obs - mean) / std, clipped to +-`clip` unless `clip` is False; float32 for the networks.

        The networks clip their own inputs (`lrun.learn.policy.INPUT_CLIP`), so collectors pass unclipped values:
        a blend needs them to map observations onto its frozen policy's statistics before clipping.
        """
        out = (np.asarray(obs, dtype=np.float64) - self.mean) / np.sqrt(self.var + self.epsilon)
        return (np.clip(out, -self.clip, self.clip) if clip else out).astype(np.float32)

    def state_vector(self) -> np.ndarray:
        """[mean, var, count] as one float64 vector (for broadcasts and checkpoints)."""
        return np.concatenate([self.mean, self.var, [self.count]])

    def load_state_vector(self, vector: np.ndarray) -> None:
        """Inverse of `state_vector`."""
        n = self.size
        if vector.shape != (2 * n + 1,):
            raise ValueError(f"normaliser state for {n} observations needs {2 * n + 1} values, got {vector.shape}")
        self.mean = vector[:n].astype(np.float64).copy()
        self.var = vector[n : 2 * n].astype(np.float64).copy()
        self.count = float(vector[2 * n])
