"""The `videochat` command: serve, weights, calibrate, doctor, avatar, voice, eval."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from core.config import Config, ConfigError, load_config

log = logging.getLogger("videochat")


def _checked_config(path: str | None, **overrides: Any) -> Config:
    """The config, with every backend name checked against the registered ones
    before anything loads (a wrong name: ConfigError, exit code 2)."""
    from models.backends import check_backends

    config = load_config(path, **overrides)
    check_backends(config)
    return config


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app

    config = _checked_config(
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


def _calibrate(args: argparse.Namespace) -> int:
    from server.machine import apply_plan, describe, load_cached, load_or_calibrate, plan_for

    config = _checked_config(args.config)
    cached = None if args.force else load_cached(config)
    if cached is None:
        print("calibrating this machine: every stage is timed on the configured models")
        with _progress_bar("calibrate") as bar:
            cached = load_or_calibrate(config, progress=bar, force=True)
    plan = plan_for(cached, config)
    apply_plan(config, plan)
    print(describe(cached, plan))
    if args.json:
        import json

        print(json.dumps({"calibration": cached.to_dict(), "plan": plan.to_dict()}, indent=1))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from tools.doctor import run

    config = _checked_config(args.config)
    return run(config, args.config or "configs/cpu.yaml (default)", as_json=args.json)


def _weights(args: argparse.Namespace) -> int:
    from tools.weights import assemble_all
    from tools.weights_verify import WeightsError

    config = load_config(args.config)
    try:
        assemble_all(config.weights_path, force=args.force, extras=args.extra)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # The default avatar (skimage's astronaut), prepared once.
    from tools.avatar_library import AvatarError
    from tools.avatar_prepare import ensure_default_avatar

    try:
        with _progress_bar("avatar astronaut") as bar:
            ensure_default_avatar(config.weights_path / "avatars", progress=bar)
    except AvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


class _progress_bar:
    """A tqdm bar driven by (fraction, message) progress callbacks."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar = None

    def __enter__(self) -> _progress_bar:
        return self

    def __call__(self, fraction: float, message: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            fmt = "{desc} {percentage:3.0f}%|{bar:24}| {elapsed}"
            self.bar = tqdm(total=100, bar_format=fmt)
        self.bar.n = int(round(100 * fraction))
        self.bar.set_description_str(f"{self.desc}: {message:<18}", refresh=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _avatar(args: argparse.Namespace) -> int:
    from tools.avatar_library import AvatarError, AvatarLimits, list_avatars, remove_avatar
    from tools.avatar_prepare import prepare_avatar

    config = load_config(args.config)
    avatars_dir = config.weights_path / "avatars"
    voice = getattr(args, "voice", None)
    if voice is not None and voice not in _known_voices(config):
        print(
            f"error: unknown voice {voice!r}: see `videochat voice list`",
            file=sys.stderr,
        )
        return 2
    try:
        if args.action == "list":
            for info in list_avatars(avatars_dir):
                extra = f"  {info.frames} frames" if info.mode == "video" else ""
                extra += f"  voice {info.voice}" if info.voice else ""
                print(f"{info.name}\t{info.mode}{extra}")
        elif args.action == "remove":
            remove_avatar(args.name, avatars_dir, default=config.avatar.default)
            print(f"removed {args.name}")
        else:
            source, kind = (args.photo, "photo") if args.photo else (args.video, "video")
            limits = AvatarLimits.from_config(config.avatars)
            with _progress_bar(f"avatar {args.name}") as bar:
                info = prepare_avatar(
                    args.name, source, kind, avatars_dir, limits, bar, voice=voice
                )
            said = f", voice {info.voice}" if info.voice else ""
            print(f"added {info.name} ({info.mode}, {info.frames} frames{said}) in {info.path}")
    except AvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _known_voices(config: Config) -> set[str]:
    """The stock Kokoro voices, those of ``tts.more_backends`` (Piper's ``joe``)
    and the user voices on disk (without loading a model)."""
    from models.backends import backend_class
    from tools.voice_library import list_voices, stock_voice_names

    weights = config.weights_path
    more = {
        voice
        for name in config.tts.more_backends
        for voice in getattr(backend_class("tts", name), "offered_voices", ())
    }
    return set(stock_voice_names(weights)) | more | {info.name for info in list_voices(weights)}


def _voice(args: argparse.Namespace) -> int:
    """videochat voice add | list | remove. Errors: exit 2 with one line."""
    from tools.voice_library import (
        VoiceError,
        VoiceLimits,
        add_voice,
        list_voices,
        remove_voice,
        stock_voices,
    )

    config = load_config(args.config)
    weights = config.weights_path
    try:
        if args.action == "list":
            defaults = {config.tts.voice_en, config.tts.voice_zh}
            for lang, names in stock_voices(weights).items():
                for name in names:
                    mark = "  (default)" if name in defaults else ""
                    print(f"{name}\t{lang}\tstock{mark}")
            for info in list_voices(weights):
                print(
                    f"{info.name}\t{info.lang}\tuser  similarity {info.similarity:.2f}"
                    f" (nearest stock {info.nearest_stock}: {info.nearest_similarity:.2f})"
                )
        elif args.action == "remove":
            remove_voice(args.name, weights)
            print(f"removed {args.name}")
        else:
            limits = VoiceLimits.from_config(config)
            with _progress_bar(f"voice {args.name}") as bar:
                info = add_voice(
                    args.name,
                    args.audio,
                    weights,
                    text=args.text,
                    lang=args.lang,
                    recognize=lambda audio: _recognize_lang(config, audio),
                    limits=limits,
                    progress=bar,
                )
            print(
                f"added {info.name} ({info.lang}, {info.speech_seconds:.1f} s of speech): "
                f"the matched voice reaches a similarity of {info.similarity:.2f} to the clip; "
                f"the nearest stock voice, {info.nearest_stock}, {info.nearest_similarity:.2f}"
            )
    except VoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # voice matching unavailable or failed
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _recognize_lang(config: Config, audio: Any) -> str:
    """The clip's language by the configured ASR (Whisper), loaded for this call."""
    from models.asr import load_recognizer

    print("no --lang or --text: recognizing the clip's language", file=sys.stderr)
    return load_recognizer(config.asr, config.weights_path).transcribe(audio).language


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # VIDEOCHAT_DEBUG=pipelines.reply,...: those loggers at DEBUG (the reply's
    # TTS calls and when its answer opened: docs/benchmarks.md reads them).
    for name in filter(None, os.environ.get("VIDEOCHAT_DEBUG", "").split(",")):
        logging.getLogger(name.strip()).setLevel(logging.DEBUG)
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

    calibrate = sub.add_parser(
        "calibrate", help="time every stage on this machine and plan for it (cached)"
    )
    calibrate.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    calibrate.add_argument("--force", action="store_true", help="measure again even if cached")
    calibrate.add_argument("--json", action="store_true", help="also print the figures as JSON")
    calibrate.set_defaults(func=_calibrate)

    doctor = sub.add_parser(
        "doctor",
        help="what every backend needs, what is here, and the command to get what is missing",
    )
    doctor.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    doctor.add_argument("--json", action="store_true", help="the report as JSON")
    doctor.set_defaults(func=_doctor)

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

    avatar = sub.add_parser("avatar", help="add, list or remove avatars (weights/avatars/)")
    avatar.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    avatar_sub = avatar.add_subparsers(dest="action", required=True)
    add = avatar_sub.add_parser("add", help="prepare an avatar from a photo or a video")
    add.add_argument("name", help="1-40 letters, digits, '-' or '_'")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--photo", metavar="FILE", help="a photo with one face")
    source.add_argument("--video", metavar="FILE", help="a short clip of one person")
    add.add_argument(
        "--voice", metavar="NAME", default=None, help="its default voice (videochat voice list)"
    )
    avatar_sub.add_parser("list", help="list the prepared avatars")
    remove = avatar_sub.add_parser("remove", help="remove an avatar")
    remove.add_argument("name")
    avatar.set_defaults(func=_avatar)

    voice = sub.add_parser("voice", help="add, list or remove voices (weights/voices/)")
    voice.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    voice_sub = voice.add_subparsers(dest="action", required=True)
    vadd = voice_sub.add_parser(
        "add", help="match a Kokoro voice to a clip of someone speaking (3-30 s of speech)"
    )
    vadd.add_argument("name", help="1-40 letters, digits, '-' or '_'; not a stock voice's")
    vadd.add_argument("--audio", metavar="FILE", required=True, help="the clip (any format)")
    vadd.add_argument("--text", metavar="TRANSCRIPT", default=None, help="what the clip says")
    vadd.add_argument(
        "--lang",
        choices=["en", "zh"],
        default=None,
        help="the clip's language (default: from --text, else recognized by the ASR)",
    )
    voice_sub.add_parser("list", help="list the stock voices per language and the user voices")
    vremove = voice_sub.add_parser("remove", help="remove a user voice")
    vremove.add_argument("name")
    voice.set_defaults(func=_voice)

    ev = sub.add_parser("eval", help="measurements (lipsync: lag, correlation, closures)")
    ev_sub = ev.add_subparsers(dest="what", required=True)
    lip = ev_sub.add_parser("lipsync", help="render en/zh sentences, FaceMesh, docs/lipsync.md")
    lip.add_argument("--weights", default="weights")
    lip.add_argument("--avatar", default=None)
    lip.add_argument("--docs", default="docs")
    lip.add_argument("--no-doc", action="store_true")
    lip.set_defaults(func=_eval_lipsync)
    vev = ev_sub.add_parser("voices", help="speaker encoders, voice matching on held-out targets")
    from evals.voices import add_arguments as add_voices_arguments

    add_voices_arguments(vev)
    vev.set_defaults(func=_eval_voices)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


def _eval_lipsync(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evals.lipsync import run

    return run(Path(args.weights), args.avatar, Path(args.docs), not args.no_doc)


def _eval_voices(args: argparse.Namespace) -> int:
    from evals.voices import run_args

    return run_args(args)


if __name__ == "__main__":
    sys.exit(main())
