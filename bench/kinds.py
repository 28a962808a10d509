"""The report's "Both machine kinds" section: the latest run's targets table on
each CPU kind (AVX-512, AVX2), so a run on one kind keeps the other's figures.

Machines of our kind differ about 2.5x in speed; a figure from one is not the
product's figure. Each run replaces its own kind's entry and keeps the others,
and says whether it was measured on such a machine or emulated on a faster one
(``../shared/tools/slow-cpu``: a CPU quota, which slows compute evenly but not
memory bandwidth or SIMD width).
"""

from __future__ import annotations

import re
from pathlib import Path

HEADING = "## Both machine kinds"
_ENTRY = re.compile(r"^### (?P<kind>[^:\n]+):", re.M)
_KIND = re.compile(r"CPU kind \*\*(?P<kind>[^*]+)\*\*")
_RUN = re.compile(r"^Run on (?P<when>\d{4}-\d\d-\d\d \d\d:\d\d) with `(?P<command>[^`]+)`", re.M)


def entry(kind: str, when: str, command: str, emulated: str | None, summary: str,
          table: list[str]) -> str:
    """One kind's entry: how it was run, the calibration, the targets table."""
    how = f"emulated on a faster machine with `{emulated}`" if emulated else "measured"
    return "\n".join(
        [f"### {kind}: {how}, run on {when} with `{command}`", "", summary, "", *table, ""]
    )


def entries(text: str) -> dict[str, str]:
    """The entries of a report's section, by kind; a report written before the
    section existed gives its own run as the one entry."""
    if HEADING in text:
        section = text[text.index(HEADING) + len(HEADING) :]
        end = section.find("\n## ")
        section = section if end < 0 else section[:end]
        starts = [m.start() for m in _ENTRY.finditer(section)] + [len(section)]
        found = {}
        for start, stop in zip(starts, starts[1:], strict=False):
            match = _ENTRY.match(section, start)
            assert match is not None
            found[match["kind"].strip()] = section[start:stop].strip() + "\n"
        return found
    kind, run = _KIND.search(text), _RUN.search(text)
    if kind is None or run is None or "## Against the targets" not in text:
        return {}
    summary = next((line for line in text.splitlines() if line.startswith("This machine:")), "")
    targets = text[text.index("## Against the targets") :]
    table = [line for line in targets.split("\n## ")[0].splitlines() if line.startswith("|")]
    return {
        kind["kind"]: entry(kind["kind"], run["when"], run["command"], None, summary, table)
    }


def section(out: Path, kind: str, this_run: str) -> list[str]:
    """The section for the new report: this run's entry and the previous
    report's entries for the other kinds."""
    try:
        previous = entries(out.read_text(encoding="utf-8"))
    except OSError:
        previous = {}
    previous[kind] = this_run
    lines = [
        HEADING,
        "",
        "The latest run on each CPU kind (the server's calibration names it), with its",
        "calibration; the sections below this one are this run's.",
        "",
    ]
    for name in sorted(previous, key=lambda k: (k != "AVX-512 VNNI", k)):
        lines += [previous[name].rstrip(), ""]
    return lines
