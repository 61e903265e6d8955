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
    if array_bytes < 1 or repeats < 1:
        raise ValueError(f"`array_bytes` (={array_bytes}) and `repeats` (={repeats}) must be >= 1")
    source = np.ones(array_bytes // 4, np.float32)
    target = np.zeros_like(source)
    numpy_s = _median_seconds(lambda: np.copyto(target, source), repeats)
    source_t, target_t = torch.from_numpy(source), torch.from_numpy(target)
    torch_s = _median_seconds(lambda: target_t.copy_(source_t), repeats)
    nbytes = source.nbytes
    result = Bandwidth(nbytes / min(numpy_s, torch_s), nbytes / numpy_s, nbytes / torch_s, nbytes, repeats)
    logger.info("streaming copy bandwidth: %.2f GB/s (numpy %.2f, torch %.2f)", result.bytes_per_s / 1e9,
                result.numpy_bytes_per_s / 1e9, result.torch_bytes_per_s / 1e9)
    return result


def _median_seconds(copy, repeats: int) -> float:
    copy()  # warm-up: first touch, thread pool start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        copy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
