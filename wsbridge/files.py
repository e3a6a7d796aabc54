"""Writing wsbridge's own files safely.

Profiles, known hosts, the ssh config and the emulator's state all follow
one rule: a file is replaced whole (written beside itself, then renamed
over the old one), so a crash never leaves half a file, and it is created
with its final mode, so a secret is never readable by others even for a
moment.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import ConfigError

__all__ = ["PRIVATE_MODE", "replace_file"]

PRIVATE_MODE = 0o600


def replace_file(
    path: Path, text: str, *, mode: int = PRIVATE_MODE, newline: str | None = None
) -> None:
    """Replace ``path`` atomically with ``text``, created with ``mode``.

    A missing parent directory is created private (0700). ``newline`` is
    passed to ``open``: ``""`` writes line endings exactly as given.

    Raises:
        ConfigError: the file or its directory cannot be written.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode
        )
        # os.open applies the umask; the mode must hold as asked.
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "w", encoding="utf-8", newline=newline) as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
