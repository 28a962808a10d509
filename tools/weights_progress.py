"""The progress bars of ``videochat weights`` (bytes downloaded, assembled, hashed)."""

from __future__ import annotations

from tqdm import tqdm


def byte_bar(total: int | None, desc: str) -> tqdm:
    # disable=None: no bar when stderr is not a terminal (CI logs stay readable).
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=None)
