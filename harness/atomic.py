"""Atomic file writes: a reader never sees a half-written cache file.

The temporary file of a write is named `.<final name>.<8 hex digits>.harness-tmp<suffix>` beside the final file, so
that the leftover of a killed write is told apart from any file of a user (`leftover_temp_files`). Only a folder the
harness owns (its manifest says so) is ever cleaned of them.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Callable, Iterator

TEMP_MARKER = 'harness-tmp'
_TEMP_NAME = re.compile(r'\.(?P<final>.+)\.[0-9a-f]{8}\.' + re.escape(TEMP_MARKER) + r'(?P<suffix>\.[A-Za-z0-9]+)?')


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str) -> Iterator[Path]:
    """Yields a temporary path beside `final`; on success it is fsynced and renamed onto `final`, else removed.

    Args:
        final: Where the file must end up.
        suffix: Ending of the temporary name (some writers, like `np.savez`, append their own ending otherwise).

    Raises:
        OSError: the folder cannot be written; `filename` is the folder (not the temporary name).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(final, suffix)
    try:
        yield tmp
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def temp_name_of(path: Path | str) -> str | None:
    """The final file name a harness temporary file was written for, or None when `path` is not one."""
    match = _TEMP_NAME.fullmatch(Path(path).name)
    return match['final'] if match else None


def leftover_temp_files(folder: Path, final_name: Callable[[str], bool]) -> list[Path]:
    """The harness temporary files in `folder` (not below it) of writes killed before their rename, sorted.

    Args:
        final_name: Whether a final file name is one the harness writes in this folder (`sim_000003.npz`, ...).
    """
    found = []
    for path in Path(folder).iterdir():
        final = temp_name_of(path)
        if final is not None and final_name(final) and path.is_file() and not path.is_symlink():
            found.append(path)
    return sorted(found)


def _create_temp(final: Path, suffix: str) -> Path:
    """Creates an empty temporary file beside `final` (mode as a plain `open()` gives it) and returns its path."""
    for _ in range(100):
        tmp = final.parent / f".{final.name}.{secrets.token_hex(4)}.{TEMP_MARKER}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as err:  # name the folder the user gave, not a random temporary name
            raise type(err)(err.errno, err.strerror, str(final.parent)) from None
    raise FileExistsError(f"{final.parent}: 100 temporary names for {final.name} taken")
