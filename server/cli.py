"""The `videochat` command: serve, weights."""

from __future__ import annotations

import argparse
import logging
import sys

from server.config import load_config

log = logging.getLogger("videochat")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app

    config = load_config(
        args.config,
        **{
            "server.host": args.host,
            "server.port": args.port,
            "server.loopback_only": True if args.loopback_only else None,
        },
    )
    app = create_app(config)
    uvicorn.run(app, host=config.server.host, port=config.server.port, log_level="info")
    return 0


def _weights(args: argparse.Namespace) -> int:
    from server.weights import WeightsError, assemble_all

    config = load_config(args.config)
    try:
        assemble_all(config.weights_path, force=args.force, extras=args.extra)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(prog="videochat", description="Real-time digital human")
    parser.add_argument("--config", default=None, help="YAML config (default configs/cpu.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the web server")
    serve.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument(
        "--loopback-only",
        action="store_true",
        help="offer only 127.0.0.1 ICE candidates (tests, benchmarks, sandboxes)",
    )
    serve.set_defaults(func=_serve)

    weights = sub.add_parser("weights", help="assemble and verify the models into weights/")
    weights.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    weights.add_argument("--force", action="store_true", help="re-assemble even if verified")
    weights.add_argument(
        "--extra",
        action="append",
        default=[],
        choices=["fast-llm"],
        help="also assemble an optional model (fast-llm: Qwen2.5-Coder 0.5B); repeatable",
    )
    weights.set_defaults(func=_weights)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
