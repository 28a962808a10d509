"""MuseTalk 1.5 at full size with random weights: seconds per frame by batch
size, and on a GPU how many sessions one worker holds.

    python -m bench.musetalk --device cpu --batches 1,4 --repeats 1
    python -m bench.musetalk --device cuda --batches 1,2,4,8 --sessions 1-8

The networks are the real architectures (musetalk.json's UNet, sd-vae-ft-mse's
AutoencoderKL, whisper-tiny's encoder), built here with random weights (no
weights need be downloaded: speed does not depend on the values) and run
through the same code as the backend (models/avatar/musetalk_nets.py: one UNet
step and the VAE decoder per frame; the Whisper encoder once per audio chunk).
``--sessions`` then runs the one batching worker (models/avatar/
musetalk_worker.py) with that many sessions asking 25 frames a second each for
``--seconds`` and reports the frames it rendered per second and the share
done by their deadline.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.avatar.musetalk_nets import MUSETALK_V15_UNET_CONFIG, MuseTalkNets, MuseTalkPaths
from models.avatar.musetalk_worker import FRAME_PERIOD, BatchWorker, choose_batch_size

# stabilityai/sd-vae-ft-mse config.json (AutoencoderKL) and openai/whisper-tiny's encoder.
SD_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 256,
}
WHISPER_TINY = {
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_layers": 4,
    "decoder_attention_heads": 6,
    "decoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "vocab_size": 51865,
}


def random_modules(module: Any) -> Any:
    """``module`` built on the meta device, then given random values (cheaper
    than the layers' own initialisation)."""
    import torch

    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.normal_(0.0, 0.02)
    return module


def full_size_nets(device: str) -> MuseTalkNets:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**MUSETALK_V15_UNET_CONFIG)
        vae = AutoencoderKL(**SD_VAE)
    unet, vae = random_modules(unet), random_modules(vae)
    whisper = WhisperModel(WhisperConfig(**WHISPER_TINY))  # small: its own init
    paths = MuseTalkPaths(Path("weights/musetalk"))
    return MuseTalkNets.from_modules(paths, device, unet, vae, whisper, WhisperFeatureExtractor())


def per_frame(
    nets: MuseTalkNets, batches: list[int], repeats: int
) -> tuple[dict[int, float], dict[int, float]]:
    """Wall seconds per batch of each size (the fastest of ``repeats``), and the
    process's CPU seconds for that run (on a shared CPU, the figure that does
    not depend on the other jobs)."""
    import torch

    seconds: dict[int, float] = {}
    cpu: dict[int, float] = {}
    for size in batches:
        latents = torch.randn((size, 8, 32, 32), device=nets.device, dtype=nets.dtype)
        prompts = torch.randn((size, nets.prompt_tokens, nets.width), device=nets.device)
        best = float("inf")
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            nets.render(latents, prompts)  # ends with .cpu(): the work is done
            took = time.perf_counter() - start
            if took < best:
                best, cpu[size] = took, time.process_time() - start_cpu
        seconds[size] = best
        print(
            f"  batch {size}: {best:.2f} s ({best / size:.2f} s a frame; "
            f"{cpu[size] / size:.2f} CPU s a frame)",
            flush=True,
        )
    return seconds, cpu


def sessions_run(nets: MuseTalkNets, batch: int, sessions: int, seconds: float) -> dict[str, Any]:
    """``sessions`` streams, each due a frame every 40 ms for ``seconds``,
    through the one worker: frames rendered per second, and the share of
    frames done by their deadline."""
    import torch

    latents = torch.randn((8, 32, 32), device=nets.device, dtype=nets.dtype)
    prompt = torch.randn((nets.prompt_tokens, nets.width), device=nets.device, dtype=nets.dtype)
    done_at: dict[int, float] = {}

    def infer(payloads: Any) -> list[Any]:
        faces = nets.render(
            torch.stack([latents] * len(payloads)), torch.stack([prompt] * len(payloads))
        )
        now = time.monotonic()
        done_at.update((index, now) for index in payloads)
        return list(faces)

    worker = BatchWorker(infer, batch, name="bench")
    frames = max(1, int(seconds / FRAME_PERIOD))
    begin = time.monotonic()
    first_due = begin + 0.2
    deadlines: dict[int, float] = {}
    jobs = []
    for k in range(frames):  # each session pushes its frames as a TTS chunk would, at once
        for session in range(sessions):
            index = len(deadlines)
            deadlines[index] = first_due + k * FRAME_PERIOD
            jobs.append(worker.submit(session, deadlines[index], index))
    for job in jobs:
        job.wait(None)
    elapsed = time.monotonic() - begin
    worker.close()
    on_time = sum(1 for i, due in deadlines.items() if done_at.get(i, float("inf")) <= due)
    return {
        "sessions": sessions,
        "batch": batch,
        "frames": len(jobs),
        "fps": len(jobs) / elapsed,
        "on_time_share": on_time / len(jobs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batches", default="1,4", help="batch sizes, e.g. 1,2,4,8")
    parser.add_argument("--repeats", type=int, default=1, help="runs per batch size (fastest)")
    parser.add_argument("--sessions", default="", help="e.g. 1-8: the worker with N sessions")
    parser.add_argument("--seconds", type=float, default=4.0, help="per --sessions run")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",") if b]
    print(
        f"MuseTalk 1.5, full size, random weights, on {args.device} "
        f"({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    started = time.perf_counter()
    nets = full_size_nets(args.device)
    print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    audio = np.random.default_rng(0).normal(0, 0.1, 16_000 * 5).astype(np.float32)
    t = time.perf_counter()
    nets.audio_features(audio)
    features_s = time.perf_counter() - t
    print(f"  Whisper-tiny features of a 5 s chunk: {features_s:.2f} s", flush=True)
    seconds, cpu = per_frame(nets, batches, args.repeats)
    chosen = choose_batch_size(seconds, 0.2)
    result: dict[str, Any] = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "features_5s_chunk_s": features_s,
        "seconds_per_batch": seconds,
        "seconds_per_frame": {b: s / b for b, s in seconds.items()},
        "cpu_seconds_per_frame": {b: s / b for b, s in cpu.items()},
        "chosen_batch": chosen,
        "sessions": [],
    }
    if args.sessions:
        lo, _, hi = args.sessions.partition("-")
        for n in range(int(lo), int(hi or lo) + 1):
            run = sessions_run(nets, chosen, n, args.seconds)
            result["sessions"].append(run)
            print(
                f"  {n} sessions: {run['fps']:.1f} frames/s rendered, "
                f"{100 * run['on_time_share']:.0f} % by their deadline",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
