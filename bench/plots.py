"""The benchmark's PNG plots (matplotlib, headless): a waterfall of the server's
stages per turn and a histogram of first-audio latency, en vs zh."""

from __future__ import annotations

from pathlib import Path

SEGMENTS = [
    ("asr_final", "ASR", "#4c72b0"),
    ("llm_first_token", "LLM first token", "#dd8452"),
    ("first_clause", "first clause", "#55a868"),
    ("tts_first_audio", "TTS first audio", "#c44e52"),
    ("first_audio_sent", "avatar + clock", "#8172b3"),
]


def write_plots(rows: list[dict], folder: Path) -> list[str]:
    """Write bench_waterfall.png and bench_latency_hist.png; return their paths."""
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    # Waterfall: one bar per turn, each stage from the previous mark to its own.
    height = max(3.0, 0.28 * len(rows) + 1.4)
    fig, ax = plt.subplots(figsize=(8, height), dpi=80)
    labels = []
    count: dict[tuple[str, str], int] = {}  # prompts are numbered: no CJK font needed
    for y, row in enumerate(rows):
        stages = row["stages"]
        start = 0.0
        for key, name, colour in SEGMENTS:
            end = stages.get(key)
            if end is None or end < start:
                continue
            ax.barh(y, end - start, left=start, color=colour, label=name if y == 0 else None)
            start = end
        if row["first_audio"] == row["first_audio"]:
            ax.plot(row["first_audio"], y, "k|", markersize=12, label="client" if y == 0 else None)
        count[(row["scenario"], row["lang"])] = count.get((row["scenario"], row["lang"]), 0) + 1
        labels.append(f"{row['scenario']} {row['lang']} #{count[(row['scenario'], row['lang'])]}")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds after end of user speech")
    ax.set_title("Per-turn stages (server timeline); | = first audio at the client")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = folder / "bench_waterfall.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(str(path))

    # Histogram of first audio at the client, en vs zh, all scenarios.
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=80)
    values = {lang: [r["first_audio"] for r in rows if r["lang"] == lang] for lang in ("en", "zh")}
    values = {lang: [v for v in vals if v == v] for lang, vals in values.items()}  # no NaN
    top = max((max(v) for v in values.values() if v), default=3.0)
    bins = [i * 0.1 for i in range(int(top / 0.1) + 2)]
    for (lang, vals), colour in zip(values.items(), ("#4c72b0", "#dd8452"), strict=True):
        if vals:
            ax.hist(vals, bins=bins, alpha=0.6, color=colour, label=f"{lang} (n={len(vals)})")
    for target, colour in ((1.2, "#4c72b0"), (1.5, "#dd8452")):
        ax.axvline(target, color=colour, linestyle="--", linewidth=1)
    ax.set_xlabel("end of user speech to first reply audio at the client (s); dashed: p50 targets")
    ax.set_ylabel("turns")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "bench_latency_hist.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(str(path))
    return paths
