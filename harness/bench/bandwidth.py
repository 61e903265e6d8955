"""The memory-bandwidth floor of batch loading: the bytes one epoch must move over the streaming copy bandwidth.

An epoch hands the model every window once: its initial frame and its `rollout_steps` target frames, each gathered from
the cached data into the batch. However clever the loader, each of those bytes is read once and written once, which is
exactly what a large `memcpy` does; so the fastest possible epoch takes `epoch_bytes / copy bandwidth`. The bandwidth is
measured in the same run, by copying arrays far larger than the CPU cache.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)
DEFAULT_ARRAY_BYTES = 256 * 2 ** 20  # far beyond any L3 cache a 2-core VM gets


@dataclass(frozen=True)
class Bandwidth:
    """Streaming copy bandwidth, in bytes copied per second (each byte is read once and written once).

    Attributes:
        bytes_per_s: The larger of the two measurements below: the floor is set by the fastest copy this machine does.
        numpy_bytes_per_s: Median of `repeats` single-threaded `np.copyto` between two arrays of `array_bytes`.
        torch_bytes_per_s: Median of `repeats` `torch.Tensor.copy_` (which may use several threads) between the same.
        array_bytes: Size of each array copied.
        repeats: Copies timed per method.

    A copy this large is streamed past the cache (glibc's `memcpy` switches to non-temporal stores), so each byte
    crosses the memory bus twice; a gather's row copies are not, and also read each destination line before writing
    it, so a gather's ratio to this floor is usually above 1.
    """
    bytes_per_s: float
    numpy_bytes_per_s: float
    torch_bytes_per_s: float
    array_bytes: int
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def measure_bandwidth(array_bytes: int = DEFAULT_ARRAY_BYTES, repeats: int = 5) -> Bandwidth:
    """Times copies between two float32 arrays of `array_bytes` each (pages touched first, so no page fault is timed).

    Args:
        array_bytes: Bytes per array; must dwarf the CPU cache (the default, 256 MiB, does on any current CPU).
        repeats: Copies per method; the median counts, the statistic the stage timings use.

    Raises:
        ValueError: `array_bytes` or `repeats` below 1.
    """
    if repeats < 1:
        raise ValueError(f"`array_bytes` (={array_bytes}) and `repeats` (={repeats}) must be >= 1")
    probe = BandwidthProbe(array_bytes)
    probe.sample()  # warm-up: first touch, thread pool start
    probe.samples.clear()
    for _ in range(repeats):
        probe.sample()
    result = probe.bandwidth()
    logger.info("streaming copy bandwidth: %.2f GB/s (numpy %.2f, torch %.2f)", result.bytes_per_s / 1e9,
                result.numpy_bytes_per_s / 1e9, result.torch_bytes_per_s / 1e9)
    return result


class BandwidthProbe:
    """Measures the streaming copy bandwidth between the timed runs of a benchmark, so that each figure's floor comes
    from the same minutes, and the same load on a shared machine, as the figure (a bandwidth taken once at the start
    moves every `/ floor` ratio with the machine's load).

    Args:
        array_bytes: Bytes per array; must dwarf the CPU cache.

    Raises:
        ValueError: `array_bytes` below 1.
    """

    def __init__(self, array_bytes: int = DEFAULT_ARRAY_BYTES):
        if array_bytes < 1:
            raise ValueError(f"`array_bytes` (={array_bytes}) must be >= 1")
        self._source = np.ones(max(1, array_bytes // 4), np.float32)
        self._target = np.zeros_like(self._source)  # both touched: no page fault is timed
        self.samples: list[tuple[float, float]] = []  # (numpy, torch) seconds per sample

    @property
    def array_bytes(self) -> int:
        return self._source.nbytes

    def sample(self) -> float:
        """One `np.copyto` (single-threaded) and one `torch.Tensor.copy_` (may use several threads) between the two
        arrays; records both and returns the faster one's bytes per second."""
        numpy_s = _seconds(lambda: np.copyto(self._target, self._source))
        source, target = torch.from_numpy(self._source), torch.from_numpy(self._target)
        torch_s = _seconds(lambda: target.copy_(source))
        self.samples.append((numpy_s, torch_s))
        return self.array_bytes / min(numpy_s, torch_s)

    def per_sample(self, since: int = 0) -> list[float]:
        """Bytes per second of each sample from number `since` on (the faster copy of each), to pair a figure's
        repetitions with the bandwidth measured right after each."""
        return [self.array_bytes / min(sample) for sample in self.samples[since:]]

    def bandwidth(self, since: int = 0) -> Bandwidth:
        """The medians of the samples from number `since` on.

        Raises:
            ValueError: no sample taken since then.
        """
        samples = self.samples[since:]
        if not samples:
            raise ValueError(f"no bandwidth sample since sample {since} (taken: {len(self.samples)})")
        numpy_s = statistics.median(s[0] for s in samples)
        torch_s = statistics.median(s[1] for s in samples)
        nbytes = self.array_bytes
        return Bandwidth(nbytes / min(numpy_s, torch_s), nbytes / numpy_s, nbytes / torch_s, nbytes, len(samples))


def _seconds(copy) -> float:
    start = time.perf_counter()
    copy()
    return time.perf_counter() - start


def epoch_bytes(n_windows: int, frame_bytes: int, rollout_steps: int) -> int:
    """Bytes one epoch must move into batches: per window its initial frame and `rollout_steps` target frames.

    Args:
        n_windows: Windows served in the epoch.
        frame_bytes: Bytes of one frame of all fields together (e.g. 32 * 32 * 2 * 4 for a float32 2-D velocity).
        rollout_steps: Target frames per window.
    """
    return n_windows * (1 + rollout_steps) * frame_bytes


def floor_seconds(nbytes: int, bandwidth: Bandwidth) -> float:
    """The least time in which `nbytes` can be copied at `bandwidth`."""
    return nbytes / bandwidth.bytes_per_s
