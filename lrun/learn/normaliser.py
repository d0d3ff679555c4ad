"""Running mean and variance of observations, mergeable across ranks from [sum, sum of squares, count]."""

from __future__ import annotations

import numpy as np

#: A feature whose variance is at most this share of max(1, mean^2) never varied: it carries no information.
CONSTANT_VARIANCE = 1e-12


def never_varied(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Boolean mask of the features whose statistics (mean, var) say they never varied."""
    return var <= CONSTANT_VARIANCE * np.maximum(1.0, np.square(mean))


class RunningNormaliser:
    """Normalise observations by running statistics; clip to +-`clip` standard deviations.

    Statistics are updated from moment sums, so that every rank can contribute its local sums to one
    Allreduce and all ranks end up with identical statistics. Each feature keeps its own count, so the
    statistics of one feature can start afresh (`forget_constant`) while the others keep theirs.

    A feature that has never varied (a walker trained on flat ground sees the obstacle slot (100, 0, 0) and
    psoas strengths of exactly 1) normalises to 0, whatever its value: the networks learnt nothing from it, so a
    new value must not reach them as +-1e6 standard deviations (clipped to +-10, it tripped the walker at the
    first obstacle or weakened muscle it met).
    """

    def __init__(self, size: int, clip: float = 10.0, epsilon: float = 1e-8) -> None:
        self.size = size
        self.clip = clip
        self.epsilon = epsilon
        self.mean = np.zeros(size)
        self.var = np.ones(size)
        self.counts = np.zeros(size)

    @property
    def count(self) -> float:
        """Observations folded in (the largest per-feature count: features forgotten at a transfer have fewer)."""
        return float(self.counts.max()) if self.size else 0.0

    @staticmethod
    def state_size(size: int) -> int:
        """Length of `state_vector` for `size` features."""
        return 3 * size

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
        new_counts = self.counts + count
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * count / new_counts
        m2 = self.var * self.counts + batch_var * count + np.square(delta) * self.counts * count / new_counts
        self.var = m2 / new_counts
        self.counts = new_counts

    def update(self, batch: np.ndarray) -> None:
        """Fold in a local batch of observations."""
        self.update_from_moments(self.moments(batch))

    def constant_features(self) -> np.ndarray:
        """Boolean mask of the features that never varied in the data seen so far (none before any data: a new
        normaliser has variance 1)."""
        return never_varied(self.mean, self.var)

    def forget_constant(self) -> np.ndarray:
        """Start the statistics of every constant feature afresh (a new stage, where they may vary); returns the
        mask of the features forgotten. They still normalise to 0 until data arrives."""
        forgotten = self.constant_features()
        self.mean[forgotten] = 0.0
        self.var[forgotten] = 0.0  # constant until the first batch: still normalised to 0
        self.counts[forgotten] = 0.0
        return forgotten

    def scale(self) -> np.ndarray:
        """1 / std per feature, 0 for constant features (float64)."""
        inverse = 1.0 / np.sqrt(self.var + self.epsilon)
        inverse[self.constant_features()] = 0.0
        return inverse

    def normalise(self, obs: np.ndarray, clip: bool = True) -> np.ndarray:
        """(obs - mean) / std (0 for constant features), clipped to +-`clip` unless `clip` is False; float32.

        The networks clip their own inputs (`lrun.learn.policy.INPUT_CLIP`), so collectors pass unclipped values:
        a blend needs them to map observations onto its frozen policy's statistics before clipping.
        """
        out = (np.asarray(obs, dtype=np.float64) - self.mean) * self.scale()
        return (np.clip(out, -self.clip, self.clip) if clip else out).astype(np.float32)

    def state_vector(self) -> np.ndarray:
        """[mean, var, per-feature count] as one float64 vector (for broadcasts and checkpoints)."""
        return np.concatenate([self.mean, self.var, self.counts])

    def load_state_vector(self, vector: np.ndarray) -> None:
        """Inverse of `state_vector`; also takes the older [mean, var, count] form (one count for all)."""
        n = self.size
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape not in ((3 * n,), (2 * n + 1,)):
            raise ValueError(f"normaliser state for {n} observations needs {3 * n} values, got {vector.shape}")
        self.mean = vector[:n].copy()
        self.var = vector[n : 2 * n].copy()
        self.counts = vector[2 * n :].copy() if len(vector) == 3 * n else np.full(n, float(vector[2 * n]))
