"""A training run that can be stopped at any moment and continued by the same command.

`RunFolder(out / "vae-run")` keeps `state.pt` (model, optimiser, step, random states, CPU and wall seconds
so far) and `log.jsonl` (one line per step). `save()` writes the state atomically, so a run killed while
saving resumes from the previous state; the log is cut back to the saved step on resume, so a step is never
logged twice. `settings` recorded at the first start must match later starts (another architecture or
learning rate in the same folder is an error, not a silent mix).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fantasy.errors import InvalidSetting

STATE_NAME = "state.pt"
LOG_NAME = "log.jsonl"


@dataclass
class RunFolder:
    path: Path
    step: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    _cpu_start: float = field(default=0.0, repr=False)
    _wall_start: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def state_file(self) -> Path:
        return self.path / STATE_NAME

    @property
    def log_file(self) -> Path:
        return self.path / LOG_NAME

    def start(self, modules: dict[str, torch.nn.Module | torch.optim.Optimizer], settings: dict,
              generator: torch.Generator | None = None) -> bool:
        """Load the saved state into `modules` if there is one (True), else record `settings` (False)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._cpu_start, self._wall_start = time.process_time(), time.perf_counter()
        settings_file = self.path / "settings.json"
        if settings_file.is_file():
            saved = json.loads(settings_file.read_text())
            changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
            if changed:
                text = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
                raise InvalidSetting(f"{self.path} holds a run with other settings ({text}); use another --out or the same settings")
        else:
            settings_file.write_text(json.dumps(settings, indent=2, default=str))
        if not self.state_file.is_file():
            self.log_file.unlink(missing_ok=True)
            return False
        state = torch.load(self.state_file, map_location="cpu", weights_only=False)
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        self.step, self.cpu_seconds, self.wall_seconds = state["step"], state["cpu_seconds"], state["wall_seconds"]
        if generator is not None:
            generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self._truncate_log()
        return True

    def _truncate_log(self) -> None:
        if not self.log_file.is_file():
            return
        lines = [line for line in self.log_file.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= self.step]
        self.log_file.write_text("".join(line + "\n" for line in kept))

    def elapsed(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) of the whole run so far, earlier sessions included."""
        return (self.cpu_seconds + time.process_time() - self._cpu_start,
                self.wall_seconds + time.perf_counter() - self._wall_start)

    def log(self, **values) -> None:
        cpu, wall = self.elapsed()
        with self.log_file.open("a") as f:
            f.write(json.dumps({"step": self.step, **values, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1)}) + "\n")

    def save(self, modules: dict[str, torch.nn.Module | torch.optim.Optimizer],
             generator: torch.Generator | None = None) -> None:
        cpu, wall = self.elapsed()
        state = {"modules": {name: m.state_dict() for name, m in modules.items()}, "step": self.step,
                 "cpu_seconds": cpu, "wall_seconds": wall, "torch_rng": torch.get_rng_state(),
                 "generator": generator.get_state() if generator is not None else None}
        tmp = self.path / f".{STATE_NAME}.partial"
        torch.save(state, tmp)
        os.replace(tmp, self.state_file)


def read_log(path: str | Path) -> list[dict]:
    """A run's log lines (dicts), in order."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
