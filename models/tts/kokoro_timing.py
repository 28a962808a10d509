"""Kokoro's own phoneme durations, exposed as a second output of its ONNX graph.

Kokoro v1.0 predicts how many frames (25 ms: 600 samples at 24 kHz) each input
token lasts, rounds them (``/encoder/Round`` -> ``Clip`` -> ``Cast``) and builds
its alignment matrix from them; the released graph only outputs the waveform.
``make_timed_model`` writes a copy of the graph whose extra output ``duration``
(int64, one value per token, the leading and trailing pad included) is that
tensor through an ``Identity``: nothing else changes, so the audio is sample for
sample the same, at no extra cost. kokoro-onnx (0.6.1) recognizes an output
named ``duration`` (``Kokoro.has_timings``) and turns it into per-phoneme
timings.

The edit needs the ``onnx`` package (``onnx==1.19.1``, with ``ml_dtypes``), at
setup time only (``videochat weights``); the server itself needs only
onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TIMED_SUFFIX = ".timed.onnx"
DURATION_OUTPUT = "duration"
# The rounded per-token frame counts, as int64, just before the cumulative sum
# that builds the alignment matrix (kokoro-v1.0.int8.onnx and kokoro-v1.0.onnx).
DURATION_TENSOR = "/encoder/Cast_output_0"


def timed_path(model_path: str | Path) -> Path:
    """``kokoro-v1.0.int8.onnx`` -> ``kokoro-v1.0.int8.timed.onnx`` (same folder)."""
    model_path = Path(model_path)
    name = model_path.name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return model_path.with_name(stem + TIMED_SUFFIX)


def _find_duration_tensor(graph: Any) -> str:
    """The int64 per-token durations: the output of the Cast that follows
    ``Round`` -> ``Clip`` on the duration predictor's output."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    if DURATION_TENSOR in producers and producers[DURATION_TENSOR].op_type == "Cast":
        return DURATION_TENSOR
    for node in graph.node:  # another export: follow Round -> Clip -> Cast
        if node.op_type != "Round":
            continue
        for clip in consumers.get(node.output[0], []):
            if clip.op_type != "Clip":
                continue
            for cast in consumers.get(clip.output[0], []):
                if cast.op_type == "Cast":
                    return cast.output[0]
    raise ValueError("no duration tensor (Round -> Clip -> Cast) in this Kokoro graph")


def make_timed_model(model_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the Kokoro graph with the extra ``duration`` output next to
    ``model_path`` (or to ``out_path``); return its path. Idempotent: a graph
    that already has the output is copied as it is."""
    import onnx
    from onnx import TensorProto, helper

    model_path = Path(model_path)
    out = Path(out_path) if out_path else timed_path(model_path)
    model = onnx.load(str(model_path))
    graph = model.graph
    if DURATION_OUTPUT not in {o.name for o in graph.output}:
        tensor = _find_duration_tensor(graph)
        graph.node.append(
            helper.make_node("Identity", [tensor], [DURATION_OUTPUT], name="duration_output")
        )
        graph.output.append(
            helper.make_tensor_value_info(DURATION_OUTPUT, TensorProto.INT64, [1, "tokens"])
        )
    tmp = out.with_name(out.name + ".part")
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out
