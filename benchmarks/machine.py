"""What every benchmark records about the machine it ran on (imported by the scripts beside it)."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def unused_result_path(folder, stem: str):
    """folder/stem.json, or stem-b.json, stem-c.json, ... whichever does not exist yet: a run
    never overwrites the record of an earlier one (the README links them by name)."""
    from pathlib import Path

    folder = Path(folder)
    for suffix in [""] + [f"-{chr(letter)}" for letter in range(ord("b"), ord("z") + 1)]:
        path = folder / f"{stem}{suffix}.json"
        if not path.exists():
            return path
    raise FileExistsError(f"{folder}: {stem}.json and its suffixes -b ... -z all exist; "
                          f"move some away or pass another output folder")
