"""Which precision to compute in on this machine: measured, once, not assumed.

    python -m tunegate.precision    # print this CPU's bf16 and fp32 matmul speeds and the choice

Training (tasks/sft.py) and serving (serve/) both choose here: on GPUs bf16 where supported, else fp16;
on CPU whichever of bf16 and fp32 measured faster (bf16 matmuls are ~100x slower than fp32 without
AVX512-BF16/AMX, and can be faster with them).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

# The CPU flags that decide how fast a bf16 matmul can be: native bf16 dot products (AVX512-BF16,
# AMX-BF16) or only conversions to fp32 (AVX2). Logged and cached with every measurement.
BF16_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni", "avx512_vnni")
# Within this ratio the two are a tie, and fp32 wins it: same speed, exact numerics.
BF16_MIN_SPEEDUP = 1.1


def cpu_identity() -> dict:
    """This machine's CPU model and flags (what `lscpu` shows, read from /proc/cpuinfo), torch version, threads."""
    import platform

    import torch

    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "flags") and key.strip() not in info:
                info[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    return {"cpu": info.get("model name") or platform.processor() or platform.machine(),
            "flags": sorted(flags), "bf16_flags": [f for f in BF16_FLAGS if f in flags],
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def measure_matmul_gflops(dtype_name: str, n: int = 384, seconds: float = 0.6) -> float:
    """GFLOP/s of an n x n matmul in this dtype, within about `seconds`: a warm-up call, then calls until the
    time is up. When the warm-up call alone takes that long (bf16 without hardware support), it is the measurement."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    start = time.perf_counter()
    torch.matmul(a, b)
    warm = time.perf_counter()
    if warm - start >= seconds:
        return 2 * n**3 / (warm - start) / 1e9
    calls = 0
    while time.perf_counter() - start < seconds or calls == 0:
        torch.matmul(a, b)
        calls += 1
    return 2 * n**3 * calls / (time.perf_counter() - warm) / 1e9


def cpu_matmul_speeds(cache_root: Path | None = None, force: bool = False) -> dict:
    """bf16 and fp32 matmul GFLOP/s on this CPU, measured once (< 2 s) and cached per CPU, flags, torch, threads."""
    from tunegate.models import cache_dir

    ident = cpu_identity()
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    path = (cache_root or cache_dir() / "cpu-precision") / f"{key}.json"
    if path.exists() and not force:
        return {**json.loads(path.read_text()), "cached": str(path)}
    start = time.perf_counter()
    gflops = {name: round(measure_matmul_gflops(name), 2) for name in ("fp32", "bf16")}
    measured = {"bf16_gflops": gflops["bf16"], "fp32_gflops": gflops["fp32"],
                "seconds": round(time.perf_counter() - start, 2), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime()),
                **{k: ident[k] for k in ("cpu", "bf16_flags", "torch", "threads")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{time.time_ns()}.tmp")
    tmp.write_text(json.dumps(measured, indent=2))
    tmp.replace(path)  # atomic: a concurrent run reads a whole file or none
    return {**measured, "cached": None}


def precision_from_speeds(speeds: dict) -> tuple[str, str]:
    """The faster of bf16 and fp32 by the measured numbers; fp32 on a tie (within BF16_MIN_SPEEDUP)."""
    bf16, fp32 = speeds["bf16_gflops"], speeds["fp32_gflops"]
    where = f"{speeds['cpu']} ({', '.join(speeds['bf16_flags']) or 'no AVX2/AVX512/AMX'})"
    numbers = f"bf16 matmul {bf16:.1f} GFLOP/s vs fp32 {fp32:.1f} GFLOP/s on {where}, torch {speeds['torch']}"
    when = f"cached from {speeds['measured_at']}" if speeds.get("cached") else "measured now"
    if bf16 >= BF16_MIN_SPEEDUP * fp32:
        return "bf16", f"{numbers} ({when}): bf16 is {bf16 / fp32:.1f}x faster"
    return "fp32", (f"{numbers} ({when}): bf16 is not at least {BF16_MIN_SPEEDUP}x faster, so fp32 "
                    f"({fp32 / max(bf16, 1e-9):.1f}x bf16's speed, exact)")


def choose_precision(requested: str) -> tuple[str, str, dict | None]:
    """Return (precision, reason, CPU matmul measurement or None). On GPUs: bf16 where supported, else fp16.
    On CPU: whichever of bf16 and fp32 measured faster on this CPU (once per machine, cached)."""
    import torch

    if requested != "auto":
        return requested, "set in the config", None
    if not torch.cuda.is_available():
        # bf16 matmuls are ~100x slower than fp32 without AVX512-BF16/AMX, and can be faster with them.
        speeds = cpu_matmul_speeds()
        return *precision_from_speeds(speeds), speeds
    if torch.cuda.is_bf16_supported():
        return "bf16", f"{torch.cuda.get_device_name()} supports bf16", None
    return "fp16", f"{torch.cuda.get_device_name()} has no bf16: fp16 with loss scaling", None


def cpu_decode_precision(requested: str) -> tuple[str, str]:
    """serve-model decodes on the CPU: (precision, reason), measured like training's when `auto`."""
    if requested != "auto":
        return requested, "set in the config (serve.precision)"
    return precision_from_speeds(cpu_matmul_speeds())


if __name__ == "__main__":
    print(json.dumps(cpu_matmul_speeds(force=True), indent=2))
    print(choose_precision("auto")[1])
