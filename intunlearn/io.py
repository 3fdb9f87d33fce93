"""File output that never leaves a half-written file behind."""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path


def write_bytes_atomic(path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename it over `path`. The file gets
    the permissions an ordinary open() would give (0666 less the umask), or keeps those of the
    file it replaces."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = _create_temporary(path)
    try:
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new, exclusively created file beside `path` (mode 0666: the system applies the umask,
    which tempfile.mkstemp's 0600 would not)."""
    for _ in range(100):
        name = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def json_safe(value):
    """value with every NaN or infinite float replaced by None (JSON has no NaN: strict
    parsers reject it). Dicts, lists and tuples are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json_atomic(path, value) -> None:
    """Strict JSON (a NaN or infinity is written as null), atomically."""
    text = json.dumps(json_safe(value), indent=2, sort_keys=True, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode())
