"""Atomic file writes: a reader never sees a half-written cache file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str) -> Iterator[Path]:
    """Yields a temporary path beside `final`; on success it is fsynced and renamed onto `final`, else removed.

    Args:
        final: Where the file must end up.
        suffix: Ending of the temporary name (some writers, like `np.savez`, append their own ending otherwise).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{final.name}.', suffix=f'.tmp{suffix}', dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode a plain open() would
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
