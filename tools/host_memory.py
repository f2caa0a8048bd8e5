"""Peak host memory of one loading step, measured in a child process (so nothing else in the caller counts).

The child imports what it needs, then waits; the parent starts watching it and lets it run the step,
a `module:function` called with JSON keyword arguments (a string `"torch.bfloat16"` becomes that
dtype). Two peaks come back, each over the child's memory just before the step:

- `peak_anon`: anonymous memory (`RssAnon` in /proc/PID/status), sampled by the parent about every
  millisecond. This is the host RAM a load *needs*: it cannot be given back while the step runs.
- `peak_rss`: the kernel's own peak resident set (`VmHWM`, reset through /proc/self/clear_refs just
  before the step, so it is exact). It also counts the checkpoint's pages mapped from the page cache,
  which the kernel drops under memory pressure instead of failing; a memory-mapped weight file shows
  up here at its full size even when nothing was copied.

`held` is what the result holds: the bytes of a returned module's parameters and buffers (not
counting tensors that merely view a memory-mapped file twice), or the int the function returned.
Linux only (/proc).

    python -m tools.host_memory fantasy.weights.real:load_dit '{"path": "...", ...}'   # the child side
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_S = 0.001
# Imported before the baseline: importing them costs 100-300 MB that no loader should be charged with.
PRELOAD = ("torch", "numpy", "safetensors.torch", "gguf", "accelerate", "diffusers.models.transformers.transformer_wan",
           "diffusers.models.autoencoders.autoencoder_kl_wan", "diffusers.quantizers.gguf.utils",
           "diffusers.loaders.single_file_model", "transformers.models.umt5.modeling_umt5",
           "transformers.models.clip.modeling_clip", "transformers.models.wav2vec2.modeling_wav2vec2")


@dataclass
class HostPeak:
    step: str
    peak_anon: int  # bytes over the baseline
    peak_rss: int  # bytes over the baseline
    held: int  # bytes the result holds (see module docstring)
    seconds: float
    samples: int
    info: dict


def _status(pid: int | str = "self") -> dict[str, int]:
    """RssAnon, RssFile, VmRSS, VmHWM of a process, in bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def measure(step: str, kwargs: dict, timeout: float = 900.0, env: dict | None = None) -> HostPeak:
    """Run `step(**kwargs)` in a fresh Python and return its peaks (raises with the child's stderr on failure)."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.host_memory", step, json.dumps(kwargs)], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, env=env or os.environ.copy(),
        )
        try:
            ready = proc.stdout.readline()
            if not ready.startswith("ready "):
                proc.wait(timeout)
                raise RuntimeError(f"{step}: the child failed before the step:\n{_tail(errors)}")
            base = json.loads(ready.removeprefix("ready "))
            peak = base["RssAnon"]
            samples = 0
            deadline = time.monotonic() + timeout
            proc.stdin.write("go\n")
            proc.stdin.flush()
            while proc.poll() is None:
                try:
                    peak = max(peak, _status(proc.pid)["RssAnon"])
                    samples += 1
                except (FileNotFoundError, ProcessLookupError, KeyError):
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    raise TimeoutError(f"{step} ran over {timeout:.0f} s")
                time.sleep(SAMPLE_S)
            out, _ = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        if proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"{step}: the child exited with {proc.returncode}:\n{_tail(errors)}")
    result = json.loads(out.strip().splitlines()[-1])
    peak = max(peak, result["anon_after"])
    return HostPeak(step, peak - base["RssAnon"], result["VmHWM"] - base["VmRSS"], result["held"],
                    result["seconds"], samples, result["info"])


def _tail(errors) -> str:
    errors.seek(0)
    return errors.read()[-4000:]


def _resolve(kwargs: dict) -> dict:
    import torch

    return {k: getattr(torch, v.removeprefix("torch.")) if isinstance(v, str) and v.startswith("torch.") else v
            for k, v in kwargs.items()}


def held_bytes(result) -> int:
    """Bytes a result holds on the CPU: the distinct parameter/buffer storages of a module or of a pipeline's
    modules, or an int as is."""
    import torch

    if isinstance(result, int):
        return result
    components = getattr(result, "components", None)
    modules = [result] if isinstance(result, torch.nn.Module) else [
        m for m in (components or {}).values() if isinstance(m, torch.nn.Module)]
    seen, total = set(), 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type != "cpu":
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def _child(step: str, raw: str) -> int:
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # library prints go to stderr; stdout carries only the protocol
    for name in PRELOAD:
        importlib.import_module(name)
    module_name, _, function_name = step.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    kwargs = _resolve(json.loads(raw))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    protocol.write("ready " + json.dumps(_status()) + "\n")
    protocol.flush()
    sys.stdin.readline()
    started = time.perf_counter()
    result = function(**kwargs)
    seconds = time.perf_counter() - started
    after = _status()
    info = getattr(result, "load_info", None) or {}
    protocol.write(json.dumps({"VmHWM": after["VmHWM"], "anon_after": after["RssAnon"], "held": held_bytes(result),
                               "seconds": seconds, "info": info}) + "\n")
    protocol.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
