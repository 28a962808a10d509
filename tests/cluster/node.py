"""One cluster node for the cluster tests: ``python -m tests.cluster.node --config FILE.yaml``.

Serves ``create_app(load_config(FILE), engines=fake_engines())`` with uvicorn
on ``server.host:server.port``. The cluster tests (and bench/cluster.py) use
the fake models of tests/fakes.py (scripted ASR, LLM, TTS and a blank
avatar): no weights, no calibration, and a node's capacity is exactly
``server.max_sessions``. What they measure is the cluster's plumbing
(placement, registry, forwarding, dead nodes, TURN relay), not inference.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from core.config import load_config
from server.app import create_app
from tests.fakes import fake_engines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the node's YAML config")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_config(args.config)
    app = create_app(config, engines=fake_engines())
    uvicorn.run(
        app,
        host=config.server.host,
        port=config.server.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(config.server.drain_s) + 1,
    )


if __name__ == "__main__":
    main()
