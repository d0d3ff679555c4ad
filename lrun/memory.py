"""Resident memory of this process, sampled by every rank so long runs can show that it stays flat."""

from __future__ import annotations


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found in /proc/self/status")


class RssLog:
    """(iteration, RSS MB) samples, one per iteration; thinned to every other sample beyond `limit`."""

    def __init__(self, limit: int = 2000) -> None:
        self.limit = limit
        self.reset()

    def reset(self) -> None:
        """Forget every sample (a new run in the same process)."""
        self.samples: list[tuple[int, float]] = []
        self.stride = 1

    def sample(self, iteration: int) -> None:
        """Record the RSS after `iteration` (kept if it falls on the current stride)."""
        if iteration % self.stride:
            return
        self.samples.append((iteration, round(rss_mb(), 2)))
        if len(self.samples) > self.limit:
            self.samples = self.samples[::2]
            self.stride *= 2
