"""What every report shares: the machine it ran on and splicing a section
into a Markdown document. Here, in an installed package, because the evals run
from the installed `videochat` command, where the repository's `bench/` is not
importable."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """One line naming this machine: cores, CPU model, memory, OS, Python."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.platform()}, "
        f"Python {platform.python_version()}, no GPU"
    )


def splice_heading(document: str, heading: str, section: str) -> str:
    """``document`` with its ``heading`` section (to the next ``## ``) replaced
    by ``section``, added at the end when it has none; the rest left as is."""
    if heading not in document:
        return (document.rstrip() + "\n\n" if document.strip() else "") + section
    start = document.index(heading)
    following = document.find("\n## ", start + len(heading))
    rest = "" if following < 0 else "\n" + document[following + 1 :]
    return document[:start] + section + rest
