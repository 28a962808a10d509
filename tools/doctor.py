"""``videochat doctor``: every registered backend of every stage, what it
needs (Python packages, weight files with a lower bound on their size, a
CUDA GPU and its memory), what of it is here, and the command that gets what
is missing. Commands are printed, never run; no model is loaded, so it takes
seconds.

Every backend declares its needs next to its code: a ``needs(config)``
classmethod returning ``models.base.BackendNeeds`` (docs/backends.md); the
doctor keeps no list of its own.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import Config
from models.backends import CONTRACTS, REQUIRED_STAGES, Stage, backend_class, backend_names
from models.base import BackendNeeds, PackageNeed, WeightNeed
from models.needs import GB, MB, TORCH


# ------------------------------------------------------------------ the checks
@dataclass
class PackageCheck:
    module: str
    install: str
    min_version: str
    installed: bool
    version: str | None
    ok: bool


@dataclass
class WeightCheck:
    path: str  # relative to the weights folder
    min_bytes: int
    found_bytes: int | None  # None: not there
    ok: bool
    fetch: str


@dataclass
class GPUDevice:
    name: str
    total_gb: float
    free_gb: float | None


@dataclass
class GPUInfo:
    source: str  # "torch", "nvidia-smi" or "none"
    devices: list[GPUDevice]
    torch_cuda: bool  # torch can run on them (what every CUDA backend here uses)
    note: str


@dataclass
class BackendCheck:
    stage: str
    name: str
    selected: bool  # the config chooses it
    declared: bool  # its class declares its needs
    # Loaded beside the selected one when it can run (tts.more_backends), left
    # out with a log line when it cannot: listed, never a reason to fail.
    offered: bool = False
    packages: list[PackageCheck] = field(default_factory=list)
    weights: list[WeightCheck] = field(default_factory=list)
    cuda: bool = False
    gpu_memory_gb: float = 0.0
    external: str = ""
    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)  # one command per problem, in order

    @property
    def ready(self) -> bool:
        return self.declared and not self.problems


@dataclass
class Report:
    config: str
    weights_dir: str
    gpu: GPUInfo
    backends: list[BackendCheck]

    @property
    def not_ready(self) -> list[BackendCheck]:
        """The selected backends that are not ready (what makes the exit code 1)."""
        return [b for b in self.backends if b.selected and not b.ready]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "weights_dir": self.weights_dir,
            "gpu": asdict(self.gpu),
            "backends": [{**asdict(b), "ready": b.ready} for b in self.backends],
            "selected_not_ready": [f"{b.stage} {b.name}" for b in self.not_ready],
            "ok": not self.not_ready,
        }


def needs_of(stage: Stage, name: str, config: Config) -> BackendNeeds | None:
    """What the backend's class itself declares (its own ``needs`` classmethod:
    one inherited from another backend, as embedded's from openai's, describes
    that one); None for a backend that declares nothing."""
    cls = backend_class(stage, name)
    if "needs" in vars(cls):
        needs = cls.needs(config)  # type: ignore[attr-defined]
        if isinstance(needs, BackendNeeds):
            return needs
    return None


def _distributions() -> dict[str, list[str]]:
    try:
        return importlib.metadata.packages_distributions()
    except Exception:  # a broken distribution's metadata must not stop the doctor
        return {}


def check_package(need: PackageNeed, dists: dict[str, list[str]]) -> PackageCheck:
    """Installed (found on the path, not imported: importing torch-based
    packages would take long) and its distribution's version."""
    top = need.module.split(".")[0]
    try:
        installed = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        installed = False
    version = None
    for dist in dists.get(top, []):
        try:
            version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    ok = installed
    if ok and need.min_version and version is not None:
        from packaging.version import InvalidVersion, Version

        try:
            ok = Version(version) >= Version(need.min_version)
        except InvalidVersion:
            pass
    return PackageCheck(need.module, need.install, need.min_version, installed, version, ok)


def _size(path: Path) -> int | None:
    """A file's size, or a folder's files together; None when it is not there."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def check_weight(need: WeightNeed, weights_dir: Path) -> WeightCheck:
    found = _size(weights_dir / need.path)
    ok = found is not None and found >= need.min_bytes and (found > 0 or need.min_bytes == 0)
    return WeightCheck(need.path, need.min_bytes, found, ok, need.fetch)


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def probe_gpu() -> GPUInfo:
    """torch.cuda when torch is installed, else nvidia-smi when present."""
    notes: list[str] = []
    if torch_installed():
        try:
            import torch

            if torch.cuda.is_available():
                devices = []
                for i in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(i)
                    free, total = torch.cuda.mem_get_info(i)
                    devices.append(GPUDevice(props.name, total / GB, free / GB))
                note = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
                return GPUInfo("torch", devices, True, note)
            build = "a CPU-only build" if not torch.version.cuda else f"CUDA {torch.version.cuda}"
            notes.append(f"torch {torch.__version__} ({build}) sees no CUDA GPU")
        except Exception as exc:  # a broken torch install is worth saying, not a crash
            notes.append(f"torch is installed but failed to load ({exc})")
    else:
        notes.append("torch is not installed")
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        devices = _nvidia_smi(smi, notes)
        if devices:
            notes.append("nvidia-smi sees the GPU(s): install a CUDA build of torch to use them")
            return GPUInfo("nvidia-smi", devices, False, "; ".join(notes))
    else:
        notes.append("no nvidia-smi")
    return GPUInfo("none", [], False, "; ".join(notes))


def _nvidia_smi(smi: str, notes: list[str]) -> list[GPUDevice]:
    query = "--query-gpu=name,memory.total,memory.free"
    try:
        out = subprocess.run(
            [smi, query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        notes.append(f"nvidia-smi failed ({exc})")
        return []
    devices = []
    for line in out.strip().splitlines():
        try:
            name, total, free = (part.strip() for part in line.split(","))
            devices.append(GPUDevice(name, float(total) * 2**20 / GB, float(free) * 2**20 / GB))
        except ValueError:
            notes.append(f"nvidia-smi said {line!r}")
    return devices


def selected_backends(config: Config) -> set[tuple[str, str]]:
    chosen = {(stage, getattr(config, stage).backend) for stage in REQUIRED_STAGES}
    if config.s2s.backend:
        chosen.add(("s2s", config.s2s.backend))
    return chosen


def check_backend(
    stage: Stage,
    name: str,
    config: Config,
    gpu: GPUInfo,
    selected: bool,
    dists: dict[str, list[str]],
) -> BackendCheck:
    needs = needs_of(stage, name, config)
    check = BackendCheck(stage, name, selected, declared=needs is not None)
    if needs is None:
        check.problems.append("its needs are not declared (no needs() and no doctor entry)")
        check.fixes.append("see the backend's module and docs/backends.md")
        return check
    check.cuda, check.gpu_memory_gb, check.external = (
        needs.cuda,
        needs.gpu_memory_gb,
        needs.external,
    )
    for package in needs.packages:
        found = check_package(package, dists)
        check.packages.append(found)
        if not found.installed:
            check.problems.append(f"package {package.module} is not installed")
            check.fixes.append(package.install)
        elif not found.ok:
            check.problems.append(
                f"package {package.module} {found.version} is older than {package.min_version}"
            )
            check.fixes.append(package.install)
    for weight in needs.weights:
        found_weight = check_weight(weight, config.weights_path)
        check.weights.append(found_weight)
        if found_weight.found_bytes is None:
            check.problems.append(f"weights/{weight.path} is missing")
            check.fixes.append(weight.fetch)
        elif not found_weight.ok:
            check.problems.append(
                f"weights/{weight.path} is {_human(found_weight.found_bytes)}, expected at "
                f"least {_human(weight.min_bytes)} (a truncated download or an LFS pointer?)"
            )
            check.fixes.append(weight.fetch)
    if needs.cuda:
        _check_gpu(check, gpu)
    if selected and stage == "llm" and name == "openai":
        _check_llm_server(check, config)
    return check


def _check_gpu(check: BackendCheck, gpu: GPUInfo) -> None:
    if not gpu.devices:
        check.problems.append("needs a CUDA GPU: none found")
        check.fixes.append("run on a machine with an NVIDIA GPU and a CUDA build of torch")
    elif not gpu.torch_cuda:
        check.problems.append("torch cannot use the GPU nvidia-smi sees")
        check.fixes.append(TORCH.install)
    elif check.gpu_memory_gb and max(d.total_gb for d in gpu.devices) < check.gpu_memory_gb:
        check.problems.append(f"needs about {check.gpu_memory_gb:g} GB of GPU memory")
        check.fixes.append("a GPU with more memory")


def _check_llm_server(check: BackendCheck, config: Config) -> None:
    """The one external need cheap to check: the OpenAI-compatible server
    (normally on 127.0.0.1) answers and serves llm.model."""
    from models.llm.openai_compatible import identify_server

    base = config.llm.base_url
    if not base:
        check.problems.append("llm.base_url is not set")
        check.fixes.append("set llm.base_url, e.g. http://127.0.0.1:8001/v1 (configs/gpu.yaml)")
        return
    kind, served = identify_server(base, config.llm.api_key, min(config.llm.connect_timeout_s, 3.0))
    if kind is None:
        check.problems.append(f"no LLM server answers at {base}")
        check.fixes.append(
            "start it, e.g. vllm serve Qwen/Qwen2.5-7B-Instruct --served-model-name qwen "
            "--enable-prefix-caching --host 127.0.0.1 --port 8001  (docs/backends.md, vLLM)"
        )
        return
    check.external += f"; answering: {kind}, serving {', '.join(served) or 'nothing listed'}"
    if served and config.llm.model not in served:
        check.problems.append(f"llm.model {config.llm.model!r} is not served at {base}")
        check.fixes.append(f"set llm.model to one of: {', '.join(served)}")


def diagnose(config: Config, config_name: str = "", gpu: GPUInfo | None = None) -> Report:
    """Check every registered backend of every stage against this machine."""
    gpu = gpu if gpu is not None else probe_gpu()
    chosen = selected_backends(config)
    dists = _distributions()
    checks = [
        check_backend(stage, name, config, gpu, (stage, name) in chosen, dists)
        for stage in CONTRACTS
        for name in backend_names(stage)
    ]
    more = set(getattr(config.tts, "more_backends", []))
    for check in checks:
        check.offered = check.stage == "tts" and check.name in more and not check.selected
    return Report(config_name, str(config.weights_path), gpu, checks)


# ------------------------------------------------------------------ the output
def _human(size: float) -> str:
    for unit, scale in (("GB", GB), ("MB", MB), ("kB", 1000)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def render(report: Report) -> str:
    lines = [f"videochat doctor: config {report.config}, weights in {report.weights_dir}"]
    gpu = report.gpu
    if gpu.devices:
        for i, d in enumerate(gpu.devices):
            free = f", {d.free_gb:.1f} GB free" if d.free_gb is not None else ""
            lines.append(f"GPU {i}: {d.name}, {d.total_gb:.1f} GB{free} (from {gpu.source})")
        if gpu.note:
            lines.append(f"  {gpu.note}")
    else:
        lines.append(f"GPU: none ({gpu.note})")
    lines.append("(* = selected by the config, + = offered beside it: tts.more_backends)")
    stage = ""
    for b in report.backends:
        if b.stage != stage:
            stage = b.stage
            lines.append(f"\n{stage}")
        state = "ready" if b.ready else ("needs not declared" if not b.declared else "NOT READY")
        mark = "*" if b.selected else "+" if b.offered else " "
        gpu_need = f", CUDA GPU ~{b.gpu_memory_gb:g} GB" if b.cuda else ""
        lines.append(f"  {mark} {b.name:<16} {state}{gpu_need}")
        for p in b.packages:
            have = f"{p.version or 'installed'}" if p.installed else "missing"
            lines.append(f"      package {p.module:<28} {have}")
        for w in b.weights:
            have = _human(w.found_bytes) if w.found_bytes is not None else "missing"
            lines.append(f"      weights/{w.path:<44} {have} (at least {_human(w.min_bytes)})")
        if b.external:
            lines.append(f"      needs {b.external}")
        for problem, fix in zip(b.problems, b.fixes, strict=True):
            lines.append(f"      ! {problem}")
            lines.append(f"        -> {fix}")
    cuda_selected = [b for b in report.backends if b.selected and b.cuda]
    if cuda_selected:
        total = sum(b.gpu_memory_gb for b in cuda_selected)
        lines.append(f"\nThe selected GPU backends take about {total:g} GB of GPU memory together.")
    bad = report.not_ready
    if bad:
        names = ", ".join(f"{b.stage} {b.name}" for b in bad)
        lines.append(f"\nNOT READY (selected): {names}: see the -> lines above.")
    else:
        lines.append("\nEvery selected backend is ready.")
    return "\n".join(lines)


def run(config: Config, config_name: str, as_json: bool = False) -> int:
    """Print the report; 0 when every selected backend is ready, else 1."""
    report = diagnose(config, config_name)
    print(json.dumps(report.to_dict(), indent=1) if as_json else render(report))
    return 1 if report.not_ready else 0
