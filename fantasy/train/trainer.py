"""The training loop: cache the clips, freeze the base, train the adapters, save one reloadable file.

What trains (`modules`): the audio adapter (projection + per-block K/V), the motion-intensity module
(labels from the data) and the identity branch (face-crop tokens); everything else (DiT, VAE, umT5,
CLIP, wav2vec2) is frozen. accelerate handles devices, mixed precision, gradient accumulation and
several processes (DDP; see `fantasy.train.processes`): each process draws its own samples, the logged
loss is their mean, and only the main process writes the config, the log and checkpoints. Checkpoints are the same
safetensors layout the app loads (`fantasy.weights.trained_modules`), so `--adapter OUT/modules.safetensors`
uses them, and stage 2 starts from stage 1 with `--init`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fantasy.errors import InvalidSetting
from fantasy.model.identity import install_identity_module
from fantasy.model.motion import install_motion_module
from fantasy.train.objective import STAGES, AdapterTrainingModel, Batch, sample_sigma
from fantasy.weights.trained_modules import IDENTITY_KEY, MOTION_PREFIX, save_modules, trainable_parameters

ADAPTER_MODULES = ("audio", "motion", "identity")
MODULES = (*ADAPTER_MODULES, "dit")  # dit: the base transformer itself (the demo preset)
CHECKPOINT_NAME = "modules.safetensors"
LOG_NAME = "train_log.jsonl"
STATE_NAME = "state.pt"  # trained weights + optimiser + step: running the same command again resumes
RESUME_SETTINGS = ("stage", "lr", "num_frames", "fps", "width", "height", "modules", "lip_weight", "seed", "extra")

Progress = Callable[[int, int, float], None]  # (step, total steps, loss)


@dataclass
class TrainConfig:
    """A training run; defaults follow the paper's reported setup where it gives one (lr 1e-4, 10 % dropout)."""

    data: Path
    out: Path
    stage: int = 1
    steps: int = 1000
    lr: float = 1e-4
    num_frames: int = 81
    fps: float = 23.0
    width: int = 512
    height: int = 512
    modules: tuple[str, ...] = ADAPTER_MODULES
    lip_weight: float = 1.0  # stage 2: tokens on the lips weigh 1 + lip_weight
    drop_audio: float = 0.1
    drop_text: float = 0.1
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    save_every: int = 500
    seed: int = 0
    same_samples: bool = False  # every process draws what process 0 draws (N processes then equal one)
    mixed_precision: str = "no"  # accelerate: "no" | "fp16" | "bf16"
    gradient_checkpointing: bool = False
    cache_dir: Path | None = None
    extra: dict = field(default_factory=dict)  # recorded in the run config (e.g. preset, init)

    def check(self) -> None:
        checks = [
            (self.stage in STAGES, f"stage must be 1 or 2, got {self.stage}"),
            (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
            (self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (self.num_frames >= 5 and (self.num_frames - 1) % 4 == 0, f"frames must be 4k+1, got {self.num_frames}"),
            (self.width % 16 == 0 and self.height % 16 == 0 and min(self.width, self.height) >= 32,
             f"width and height must be multiples of 16 (at least 32), got {self.width}x{self.height}"),
            (bool(self.modules) and set(self.modules) <= set(MODULES),
             f"modules must be some of {', '.join(MODULES)}, got {', '.join(self.modules) or 'none'}"),
            (0 <= self.drop_audio < 1 and 0 <= self.drop_text < 1, "dropout rates must be in [0, 1)"),
            (self.lip_weight >= 0, f"lip weight must be >= 0, got {self.lip_weight}"),
            (self.grad_accum >= 1 and self.save_every >= 1, "grad accumulation and save interval must be >= 1"),
            (self.mixed_precision in ("no", "fp16", "bf16"), f"mixed precision must be no, fp16 or bf16, got {self.mixed_precision}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidSetting(message)


@dataclass
class TrainResult:
    checkpoint: Path
    losses: list[float]
    steps: int
    clips: int


def prepare_modules(pipe, modules: tuple[str, ...]) -> dict[str, torch.nn.Parameter]:
    """Install missing motion/identity modules (zero-initialised), freeze everything else; return what trains.

    Trained weights become fp32 (the processors compute their branch in their weights' dtype and cast back).
    `dit` trains every other transformer weight too (keys `transformer.NAME`): the demo preset's small base.
    """
    if "motion" in modules and pipe.motion_context is None:
        pipe.motion_context = install_motion_module(pipe.transformer)
    if "identity" in modules and pipe.identity_context is None:
        pipe.identity_context = install_identity_module(pipe.transformer, pipe.image_encoder.config.hidden_size)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
    trained = {}
    for key, param in trainable_parameters(pipe).items():
        group = "motion" if key.startswith(MOTION_PREFIX) else "identity" if IDENTITY_KEY.match(key) else "audio"
        if group in modules:
            param.data = param.data.float()  # fp32 master weights: AdamW steps vanish in bf16 weights
            param.requires_grad_(True)
            trained[key] = param
    if "dit" in modules:
        taken = {id(p) for p in trained.values()}
        for name, param in pipe.transformer.named_parameters():
            if id(param) not in taken:
                param.data = param.data.float()
                param.requires_grad_(True)
                trained[f"transformer.{name}"] = param
    return trained


def make_batch(item: dict, dataset, device, generator: torch.Generator, config: TrainConfig) -> Batch:
    """A dataset item on `device`, with condition dropout drawn from `generator`."""
    drop_text = float(torch.rand((), generator=generator)) < config.drop_text
    drop_audio = float(torch.rand((), generator=generator)) < config.drop_audio
    prompt = dataset.empty_prompt_embeds if drop_text else item["prompt_embeds"]
    labels = item["motion_labels"]
    return Batch(
        latents=item["latents"][None].to(device), condition=item["condition"][None].to(device),
        prompt_embeds=prompt[None].to(device), clip_tokens=item["clip_tokens"][None].to(device),
        audio_features=item["audio_features"][None].to(device), num_frames=dataset.num_frames,
        lip_mask=item["lip_mask"].to(device), face_tokens=item["face_clip_tokens"][None].to(device),
        motion=(float(labels[0]), float(labels[1])), drop_audio=drop_audio,
    )


def _shuffled(dataset, generator: torch.Generator) -> Iterator[dict]:
    """Endless epochs over the clips, each in a new random order."""
    while True:
        for index in torch.randperm(len(dataset), generator=generator).tolist():
            yield dataset[index]


def train(pipe, config: TrainConfig, dataset, progress: Progress | None = None) -> TrainResult:
    """Train on a `fantasy.train.dataset.TrainingSet` (already cached with this pipeline's encoders)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    config.check()
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    torch.manual_seed(config.seed)
    trained = prepare_modules(pipe, config.modules)
    if config.gradient_checkpointing:
        pipe.transformer.enable_gradient_checkpointing()
    pipe.transformer.train()
    model = AdapterTrainingModel(pipe)
    optimizer = torch.optim.AdamW(list(trained.values()), lr=config.lr, weight_decay=0.0)
    first = _resume(config, trained, optimizer)  # before accelerate wraps the optimiser
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    # Each process draws its own clips, noise and dropout (seeded by rank), so GPUs see different samples;
    # a resumed run seeds by its first step too, so it does not replay the samples already trained on.
    rank_offset = 0 if config.same_samples else accelerator.process_index
    generator = torch.Generator().manual_seed(config.seed + 1 + rank_offset + 1_000_003 * (first - 1))
    main = accelerator.is_main_process
    if main:
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "config.json").write_text(json.dumps(asdict(config), default=str, indent=2))
        _cut_log(config.out / LOG_NAME, first - 1)
    log = (config.out / LOG_NAME).open("a") if main else None
    losses: list[float] = []
    items = _shuffled(dataset, generator)
    try:
        for step in range(first, config.steps + 1):
            step_loss = 0.0
            for _ in range(config.grad_accum):
                item = next(items)
                batch = make_batch(item, dataset, accelerator.device, generator, config)
                sigma = sample_sigma(generator)
                noise = torch.randn(batch.latents.shape, generator=generator).to(accelerator.device)
                with accelerator.accumulate(model):
                    try:
                        with accelerator.autocast():
                            loss = model(batch, config.stage, sigma, noise, config.lip_weight)
                        accelerator.backward(loss)
                    finally:
                        inner.release()
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(list(trained.values()), config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                step_loss += float(loss.detach()) / config.grad_accum
            step_loss = _mean_over_processes(accelerator, step_loss)
            losses.append(step_loss)
            if main:
                log.write(json.dumps({"step": step, "loss": step_loss}) + "\n")
                if progress is not None:
                    progress(step, config.steps, step_loss)
                if step % config.save_every == 0 or step == config.steps:
                    log.flush()
                    _save(pipe, config, step, trained, optimizer)
        accelerator.wait_for_everyone()  # no process leaves before the last checkpoint is on disk
    finally:
        if log is not None:
            log.close()
        # accelerate keeps one process-wide state; forget its precision so a later run may choose another.
        AcceleratorState._reset_state(reset_partial_state=False)
        pipe.transformer.eval()
        for param in trained.values():
            param.requires_grad_(False)
    return TrainResult(config.out / CHECKPOINT_NAME, losses, config.steps, len(dataset))


def _settings(config: TrainConfig) -> dict:
    return json.loads(json.dumps({k: getattr(config, k) for k in RESUME_SETTINGS}, default=str))


def _resume(config: TrainConfig, trained: dict[str, torch.nn.Parameter], optimizer) -> int:
    """The first step to run: 1, or one past the saved state's step (whose weights and optimiser are loaded)."""
    path = config.out / STATE_NAME
    if not path.is_file():
        return 1
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["settings"] != _settings(config):
        changed = sorted(k for k in RESUME_SETTINGS if state["settings"].get(k) != _settings(config).get(k))
        raise InvalidSetting(f"{config.out} holds a run with other settings ({', '.join(changed)}); continue it with the "
                             "same settings, or train into another --out")
    if set(state["weights"]) != set(trained):
        raise InvalidSetting(f"{config.out} holds a run that trained other weights; use another --out")
    with torch.no_grad():
        for key, param in trained.items():
            param.copy_(state["weights"][key])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]) + 1


def _cut_log(path: Path, last_step: int) -> None:
    """Drop log lines past `last_step` (a resumed run logs those steps again), or the whole log on a fresh start."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= last_step))


def _mean_over_processes(accelerator, value: float) -> float:
    """The step's loss averaged over every process (each saw its own samples); itself with one process."""
    if accelerator.num_processes == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(total, reduction="mean"))


def _save(pipe, config: TrainConfig, step: int, trained: dict[str, torch.nn.Parameter], optimizer) -> None:
    """`step-NNNNNN.safetensors` plus `modules.safetensors` (the latest), both complete files (atomic), and the
    resumable state. With `dit` trained they are whole demo DiT files (`fantasy.weights.demo`), and a copy goes
    to `extra["publish"]` (the demo model folder's dit.safetensors) when given."""
    out = config.out
    path = out / f"step-{step:06d}.safetensors"
    if "dit" in config.modules:
        from fantasy.weights.demo import save_part

        save_part(pipe, "dit", path)
    else:
        save_modules(pipe, path)
    latest = out / (CHECKPOINT_NAME + ".partial")
    shutil.copyfile(path, latest)
    latest.replace(out / CHECKPOINT_NAME)
    if config.extra.get("publish"):
        publish = Path(config.extra["publish"])
        tmp = publish.with_name(f".{publish.name}.partial")
        shutil.copyfile(path, tmp)
        tmp.replace(publish)
    state = {"step": step, "settings": _settings(config), "optimizer": optimizer.state_dict(),
             "weights": {k: p.detach().cpu().clone() for k, p in trained.items()}}
    tmp = out / f".{STATE_NAME}.partial"
    torch.save(state, tmp)
    tmp.replace(out / STATE_NAME)
    from fantasy.train.loss_plot import write_loss_plot
    from fantasy.train.resumable import read_log

    write_loss_plot(read_log(out / LOG_NAME), out / "loss.png", ("loss",), f"stage {config.stage}")
