"""Real weights: what the `real` preset needs, where it lives on disk, and loading the pipeline from it.

Layout under the weights directory (default `weights/`, or `$FANTASY_WEIGHTS`); each Hub repo gets
a folder named after it, holding the repo's own paths — exactly the files the loader reads
(`RepoPart.files_read`), nothing more:

    Wan2.1-I2V-14B-720P-Diffusers/   tokenizer/{tokenizer.json,tokenizer_config.json,special_tokens_map.json}
                                     text_encoder/{config.json,model.safetensors.index.json,model-0000N-of-00005...}
                                     image_encoder/{config.json,model.safetensors} image_processor/preprocessor_config.json
                                     vae/{config.json,diffusion_pytorch_model.safetensors} transformer/config.json
    Wan2.1-I2V-14B-720P-gguf/        wan2.1-i2v-14b-720p-Q8_0.gguf and/or -Q4_K_M.gguf   (--dit q8_0|q4_k_m)
    Wan_2.1_ComfyUI_repackaged/      split_files/diffusion_models/wan2.1_i2v_720p_14B_bf16.safetensors (--dit bf16)
    wav2vec2-base-960h/              config.json preprocessor_config.json model.safetensors
    fantasytalking_model.safetensors the adapter, converted once from acvlab/FantasyTalking's .ckpt
                                     (not needed, and never converted, when --adapter names another file)

A component missing from that folder is looked up in the Hugging Face cache without network access
(`local_files_only`), so files fetched by other tools work too, offline included.

A ComfyUI models folder (`comfy_models`, `--comfy-models DIR` or `$FANTASY_COMFY_MODELS`) supplies whatever Wan
files it holds, in ComfyUI's and kijai's single-file formats (`fantasy.weights.comfy_folder`): the DiT, umT5 (its
tokenizer rides in the file), CLIP-vision-h and the VAE. Only what it lacks is read from the layout above
(typically wav2vec2 and the adapter; the tokenizer too when the umT5 file carries none). Nothing here
downloads: a missing file raises `WeightsMissing` naming the file, its repo and the fetch command.
Host RAM while loading stays near what the loaded models hold (`fantasy.weights.checkpoints`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fantasy.errors import FantasyError, InputFileNotFound, WeightsMissing
from fantasy.weights.adapter_weights import (
    OFFICIAL_FILE,
    OFFICIAL_REPO,
    convert_checkpoint,
    has_low_precision_projection,
)

WAN_REPO = "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"
WAV2VEC_REPO = "facebook/wav2vec2-base-960h"
ADAPTER_SAFETENSORS = "fantasytalking_model.safetensors"
DEFAULT_DIT = "q8_0"  # what `download` fetches; generation picks bf16 when it fits (`fantasy.weights.dit_choice`)
DEFAULT_VRAM = "resident"
VAE_TILE = 512  # px; frames up to this size decode untiled


@dataclass(frozen=True)
class RepoPart:
    """The files of one Hub repo that the real preset reads, and how to tell they are on disk.

    `patterns` are `allow_patterns` for `snapshot_download`; `required` are the paths the loader reads
    (`a|b` means either; a `*.index.json` also requires every shard its weight map names);
    `fallbacks` swap a pattern that matches nothing on the Hub for another (e.g. a repo with only a
    `.bin`); `hub_shards` are the shard names the Hub repo has (for the Space's preload list).
    """

    repo: str
    folder: str
    patterns: tuple[str, ...]
    required: tuple[str, ...]
    purpose: str
    fallbacks: tuple[tuple[str, str], ...] = ()
    hub_shards: tuple[str, ...] = ()

    def first_missing(self, folder: Path) -> str | None:
        try:
            self.files_read(folder)
        except _Missing as missing:
            return missing.entry
        return None

    def files_read(self, folder: Path) -> list[str]:
        """The paths (relative to `folder`) the loader reads; `_Missing` for the first one absent."""
        files = []
        for entry in self.required:
            found = next((alt for alt in entry.split("|") if (folder / alt).is_file()), None)
            if found is None:
                raise _Missing(entry)
            files.append(found)
            if found.endswith(".index.json"):
                from fantasy.weights.checkpoints import index_shards

                parent = str(Path(found).parent)
                for shard in index_shards(folder / found):
                    path = shard if parent == "." else f"{parent}/{shard}"
                    if not (folder / path).is_file():
                        raise _Missing(path)
                    files.append(path)
        return files

    def hub_files(self) -> list[str]:
        """Every file the loader reads from this repo as the Hub lays it out."""
        return [entry.split("|")[0] for entry in self.required] + list(self.hub_shards)


class _Missing(Exception):
    def __init__(self, entry: str):
        super().__init__(entry)
        self.entry = entry


WAN_FILES = (
    "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
    "text_encoder/config.json", "text_encoder/model.safetensors.index.json|text_encoder/model.safetensors",
    "image_encoder/config.json", "image_encoder/model.safetensors", "image_processor/preprocessor_config.json",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "transformer/config.json",
)
# Which of WAN_FILES each component reads (a ComfyUI folder may supply the component instead).
WAN_GROUPS = {
    "tokenizer": WAN_FILES[0:3], "text_encoder": WAN_FILES[3:5], "clip_vision": WAN_FILES[5:8],
    "vae": WAN_FILES[8:10], "transformer_config": WAN_FILES[10:11],
}
WAN_PART = RepoPart(
    WAN_REPO, "Wan2.1-I2V-14B-720P-Diffusers",
    patterns=tuple(alt for entry in WAN_FILES for alt in entry.split("|")) + ("text_encoder/model-*-of-*.safetensors",),
    required=WAN_FILES,
    purpose="umT5 text encoder + tokenizer, CLIP image encoder + processor, VAE and DiT configs",
    hub_shards=tuple(f"text_encoder/model-{i:05d}-of-00005.safetensors" for i in range(1, 6)),
)
_GGUF_REPO = "city96/Wan2.1-I2V-14B-720P-gguf"
DIT_FILES: dict[str, RepoPart] = {
    "q8_0": RepoPart(_GGUF_REPO, "Wan2.1-I2V-14B-720P-gguf", ("wan2.1-i2v-14b-720p-Q8_0.gguf",),
                     ("wan2.1-i2v-14b-720p-Q8_0.gguf",), "Wan2.1 I2V 14B DiT, GGUF Q8_0"),
    "q4_k_m": RepoPart(_GGUF_REPO, "Wan2.1-I2V-14B-720P-gguf", ("wan2.1-i2v-14b-720p-Q4_K_M.gguf",),
                       ("wan2.1-i2v-14b-720p-Q4_K_M.gguf",), "Wan2.1 I2V 14B DiT, GGUF Q4_K_M"),
    "bf16": RepoPart("Comfy-Org/Wan_2.1_ComfyUI_repackaged", "Wan_2.1_ComfyUI_repackaged",
                     ("split_files/diffusion_models/wan2.1_i2v_720p_14B_bf16.safetensors",),
                     ("split_files/diffusion_models/wan2.1_i2v_720p_14B_bf16.safetensors",),
                     "Wan2.1 I2V 14B DiT, bf16 (original key names)"),
}
ADAPTER_PART = RepoPart(OFFICIAL_REPO, "FantasyTalking", (OFFICIAL_FILE,), (OFFICIAL_FILE,),
                        "FantasyTalking audio adapter (converted once to safetensors)")
WAV2VEC_PART = RepoPart(
    WAV2VEC_REPO, "wav2vec2-base-960h", ("config.json", "preprocessor_config.json", "model.safetensors"),
    ("config.json", "preprocessor_config.json", "model.safetensors|pytorch_model.bin"),
    "wav2vec2 speech encoder", fallbacks=(("model.safetensors", "pytorch_model.bin"),),
)


def weights_dir(path: str | Path | None = None) -> Path:
    if path is not None:
        return Path(path)
    return Path(os.environ.get("FANTASY_WEIGHTS", Path(__file__).resolve().parents[2] / "weights"))


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE`, read now (huggingface_hub reads it once at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def dit_file_key(dit: str) -> str:
    from fantasy.weights.quantize import get_dit_mode

    return get_dit_mode(dit).file


def download_plan(dit: str = DEFAULT_DIT, comfy: Path | None = None) -> list[RepoPart]:
    """Every repo part the real preset needs with this DiT mode, in download order; with a ComfyUI folder,
    only what it does not hold (`check_real_weights` reads the rest from there)."""
    if comfy is None:
        return [WAN_PART, DIT_FILES[dit_file_key(dit)], ADAPTER_PART, WAV2VEC_PART]
    from fantasy.weights.comfy_folder import find_comfy_files

    file_key = dit_file_key(dit)
    found = find_comfy_files(comfy, want_gguf=None if file_key == "bf16" else file_key).found()
    needed = _wan_components_needed(found)
    parts = [wan_part_for(needed)] if needed else []
    if "dit" not in found:
        parts.append(DIT_FILES[file_key])
    return parts + [ADAPTER_PART, WAV2VEC_PART]


def comfy_dit_mode(comfy: Path) -> str | None:
    """The `--dit` that reads the DiT a ComfyUI folder holds ('bf16' for any safetensors DiT, else its GGUF
    type), or None when it holds none: what `download` fetches no DiT for."""
    from fantasy.weights.comfy_folder import find_comfy_files, gguf_quant_of

    if find_comfy_files(comfy).dit is not None:
        return "bf16"
    for quant in ("q8_0", "q4_k_m"):
        found = find_comfy_files(comfy, want_gguf=quant).dit
        if found is not None:
            return gguf_quant_of(found.name)
    return None


def fetch_command(dit: str, root: Path) -> str:
    return f"python -m fantasy download --dit {dit_file_key(dit)} --dir {root}"


def missing_error(part: RepoPart, entry: str, root: Path, dit: str) -> WeightsMissing:
    """The error for a required file that is neither under `root` nor in the Hugging Face cache."""
    shown = " or ".join(entry.split("|"))
    message = (
        f"Missing weight file {root / part.folder / entry.split('|')[0]} ('{shown}' from the Hugging Face repo "
        f"'{part.repo}': {part.purpose}). Fetch it with: {fetch_command(dit, root)}"
    )
    return WeightsMissing(message + _offline_hint())


def _offline_hint() -> str:
    if not hub_offline():
        return ""
    return " (HF_HUB_OFFLINE=1 is set: unset it for the download; generating afterwards needs no network)"


def _hf_cache_folder(part: RepoPart) -> Path | None:
    """The repo's snapshot in the Hugging Face cache, if there is one; never touches the network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(part.repo, allow_patterns=list(part.patterns), local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or no usable cache at all
        return None


def locate(part: RepoPart, root: Path) -> Path | None:
    """Folder holding every required file of `part`: under `root`, else in the HF cache, else None."""
    local = root / part.folder
    if part.first_missing(local) is None:
        return local
    cached = _hf_cache_folder(part)
    if cached is not None and part.first_missing(cached) is None:
        return cached
    return None


def require(part: RepoPart, root: Path, dit: str) -> Path:
    folder = locate(part, root)
    if folder is None:
        raise missing_error(part, part.first_missing(root / part.folder) or part.required[0], root, dit)
    return folder


def adapter_file(root: Path, dit: str = DEFAULT_DIT) -> Path:
    """The converted adapter; converts the released `.ckpt` once if only that is present (or again, when
    the converted file predates the fp32 projection and the `.ckpt` is still there)."""
    converted = root / ADAPTER_SAFETENSORS
    if converted.is_file() and not has_low_precision_projection(converted):
        return converted
    for candidate in (root / ADAPTER_PART.folder / OFFICIAL_FILE, root / OFFICIAL_FILE):
        if candidate.is_file():
            return _convert_once(candidate, converted)
    cached = _hf_cache_folder(ADAPTER_PART)
    if cached is not None and (cached / OFFICIAL_FILE).is_file():
        return _convert_once(cached / OFFICIAL_FILE, converted)
    if converted.is_file():  # an older conversion, and no .ckpt left to redo it from
        print(f"note: {converted} holds the audio projection in bf16 (converted by an older version; the release "
              f"runs it in fp32); re-download to convert it again: {fetch_command(dit, root)}", file=sys.stderr)
        return converted
    raise WeightsMissing(
        f"Missing weight file {converted} (converted from '{OFFICIAL_FILE}' of the Hugging Face repo "
        f"'{OFFICIAL_REPO}': {ADAPTER_PART.purpose}). Fetch it with: {fetch_command(dit, root)}{_offline_hint()}"
    )


def _convert_once(ckpt: Path, converted: Path) -> Path:
    try:
        count = convert_checkpoint(ckpt, converted)
    except OSError as exc:  # read-only weights dir: read the checkpoint itself (still weights_only)
        print(f"note: could not write {converted} ({exc}); reading {ckpt} directly", file=sys.stderr)
        return ckpt
    print(f"converted {ckpt} -> {converted} ({count} tensors); later runs read the safetensors", file=sys.stderr)
    return converted


def given_adapter(adapter: str | Path) -> Path:
    """An adapter the user named (--adapter / FANTASY_ADAPTER): it must exist; the released one is then never needed."""
    path = Path(adapter)
    if not path.is_file():
        raise InputFileNotFound(f"Adapter file not found: {path} (given with --adapter or FANTASY_ADAPTER)")
    return path


def wan_part_for(components: list[str]) -> RepoPart:
    """WAN_PART, restricted to the files of `components` (keys of WAN_GROUPS); WAN_PART itself for all of them."""
    if list(components) == list(WAN_GROUPS):
        return WAN_PART
    required = tuple(entry for component in components for entry in WAN_GROUPS[component])
    patterns = tuple(alt for entry in required for alt in entry.split("|"))
    shards = WAN_PART.hub_shards if "text_encoder" in components else ()
    if shards:
        patterns += ("text_encoder/model-*-of-*.safetensors",)
    return replace(WAN_PART, required=required, patterns=patterns, hub_shards=shards)


def _wan_components_needed(found: dict[str, Path]) -> list[str]:
    """What the Wan-AI folder must still supply when a ComfyUI folder supplied `found`."""
    from fantasy.weights.single_file import read_header
    from fantasy.weights.umt5_file import has_tokenizer

    needed = []
    if "text_encoder" not in found:
        needed += ["tokenizer", "text_encoder"]
    elif not has_tokenizer(read_header(found["text_encoder"])):
        needed.append("tokenizer")
    needed += [name for name in ("clip_vision", "vae") if name not in found]
    if "dit" not in found:
        needed.append("transformer_config")
    return needed


def check_real_weights(root: Path, dit: str = DEFAULT_DIT, adapter: str | Path | None = None,
                       comfy: Path | None = None) -> dict:
    """Paths of everything the real preset reads, or `WeightsMissing` for the first thing absent.

    With `adapter` given, that file is the adapter: the released one is neither required nor converted.
    `comfy`: a ComfyUI models folder (`fantasy.weights.comfy_folder.comfy_models_dir`) whose files come first;
    `paths["comfy"]` names them by role, `paths["wan"]` is None when nothing is needed from the Wan-AI folder.
    """
    from fantasy.weights.comfy_folder import find_comfy_files

    file_key = dit_file_key(dit)
    files = find_comfy_files(comfy, want_gguf=None if file_key == "bf16" else file_key) if comfy else None
    found = files.found() if files is not None else {}
    dit_part = DIT_FILES[file_key]
    if "dit" in found:
        dit_file = found["dit"]
    else:
        try:
            dit_file = require(dit_part, root, dit) / dit_part.required[0]
        except WeightsMissing as missing:
            raise WeightsMissing(f"{missing}{_comfy_dit_hint(comfy, file_key)}") from None
    needed = _wan_components_needed(found)
    wan_part = wan_part_for(needed) if needed else None
    try:
        wan = require(wan_part, root, dit) if wan_part is not None else None
    except WeightsMissing as missing:
        hint = f" (or put its ComfyUI single file into {comfy})" if comfy else ""
        raise WeightsMissing(f"{missing}{hint}") from None
    wav2vec = require(WAV2VEC_PART, root, dit)
    chosen = given_adapter(adapter) if adapter is not None else adapter_file(root, dit)
    return {"wan": wan, "wan_part": wan_part, "dit": dit_file, "wav2vec": wav2vec, "adapter": chosen,
            "comfy": found, "comfy_notes": files.notes if files is not None else ()}


def _comfy_dit_hint(comfy: Path | None, file_key: str) -> str:
    """For a DiT missing in the storage asked for: the DiT the ComfyUI folder does hold, and the --dit that reads it."""
    from fantasy.weights.comfy_folder import find_comfy_files, gguf_quant_of

    if comfy is None:
        return ""
    others = [find_comfy_files(comfy, want_gguf=kind).dit for kind in (None, "q8_0", "q4_k_m") if kind != file_key]
    other = next((path for path in others if path is not None), None)
    if other is None:
        return f" (the ComfyUI folder {comfy} holds no Wan2.1 I2V 14B DiT either)"
    use = gguf_quant_of(other.name) if other.suffix.lower() == ".gguf" else "bf16 (or bf16-fp8-storage)"
    return f"; the ComfyUI folder holds {other.name}: use --dit {use} to run it"


def files_read(paths: dict) -> list[Path]:
    """Every file `load_real_pipeline` reads for these resolved paths (what a Space must preload)."""
    files = []
    if paths["wan"] is not None:
        files += [paths["wan"] / name for name in paths["wan_part"].files_read(paths["wan"])]
    files += [paths["wav2vec"] / name for name in WAV2VEC_PART.files_read(paths["wav2vec"])]
    files += [path for role, path in paths.get("comfy", {}).items() if role != "dit"]
    return files + [paths["dit"], paths["adapter"]]


def resolve_device(device: str | torch.device | None, allow_cpu: bool = False) -> torch.device:
    """The GPU the real preset runs on; a clear `FantasyError` when there is none."""
    if device is None:
        if not torch.cuda.is_available():
            raise FantasyError(
                "The real preset needs a CUDA GPU and none was found (torch.cuda.is_available() is False). "
                "On this machine use --preset tiny (random demo models)."
            )
        return torch.device("cuda")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FantasyError(f"--device {device} was asked for, but torch sees no CUDA GPU. Use --preset tiny here.")
    if device.type != "cuda" and not (allow_cpu and device.type == "cpu"):
        raise FantasyError(f"The real preset (14B) runs on a CUDA GPU only, not on '{device}'. Use --preset tiny.")
    return device


def _check_fp8_support(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise FantasyError(
            f"--dit bf16-fp8 needs fp8 matmuls (compute capability 8.9+, e.g. L4/4090/H100); {name} has "
            f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}. Use --dit bf16-fp8-storage, "
            "bf16-int8 or q8_0."
        )


def _adapter_dims(adapter: Path, audio_dim: int) -> tuple[int, int]:
    """(audio_dim, context_dim) of the adapter's projection, read from the file header only."""
    if adapter.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(adapter), framework="pt") as f:
            if "audio_proj.proj.weight" in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                context_dim, audio_dim = f.get_slice("audio_proj.proj.weight").get_shape()
                return audio_dim, context_dim
    return audio_dim, 2048


def enable_vae_tiling(vae):
    """Tiles only above 512 px, so the default size still decodes (and streams) frame by frame."""
    vae.enable_tiling(tile_sample_min_height=VAE_TILE, tile_sample_min_width=VAE_TILE,
                      tile_sample_stride_height=VAE_TILE - 64, tile_sample_stride_width=VAE_TILE - 64)
    return vae


def _auto_dit(root: Path, device: torch.device, vram: str, fit_size: int, fit_frames: int, fit_batch: int,
              comfy: Path | None = None):
    """The storage rule (`fantasy.weights.dit_choice`) over the DiT files on disk, ComfyUI's included.

    A ComfyUI folder usually holds one safetensors DiT (often fp8) and no GGUF: where the rule says Q8_0 but no
    Q8_0 file exists, that file is held in fp8 with bf16 compute instead (`bf16-fp8-storage`, what ComfyUI
    does with an fp8 file), at about the size of Q8_0.
    """
    from dataclasses import replace as replaced

    from fantasy.weights.comfy_folder import find_comfy_files
    from fantasy.weights.dit_choice import choose_dit, free_vram_bytes

    comfy_file = find_comfy_files(comfy).dit if comfy is not None else None
    bf16_on_disk = comfy_file is not None or locate(DIT_FILES["bf16"], root) is not None
    choice = choose_dit(free_vram_bytes(device), vram, fit_size, fit_frames, fit_batch, bf16_on_disk)
    q8_0_on_disk = locate(DIT_FILES["q8_0"], root) is not None or (
        comfy is not None and find_comfy_files(comfy, want_gguf="q8_0").dit is not None)
    if choice.mode == "q8_0" and not q8_0_on_disk and comfy_file is not None:
        return replaced(choice, mode="bf16-fp8-storage",
                        reason=f"{choice.reason}; no Q8_0 file, so {comfy_file.name} is held in fp8 (bf16 compute)")
    return choice


def load_real_pipeline(
    device: str | torch.device | None = None, adapter: str | Path | None = None, weights: str | Path | None = None,
    dit: str | None = None, vram: str = DEFAULT_VRAM, dtype: torch.dtype = torch.bfloat16, allow_cpu: bool = False,
    fit_size: int = 512, fit_frames: int = 81, fit_batch: int = 1, comfy_models: str | Path | None = None,
):
    """The 14B pipeline with the FantasyTalking adapter, its DiT stored as `dit`, placed for `vram`.

    `dit=None` picks bf16 or Q8_0 from the free GPU memory at `fit_size` px x `fit_frames` frames with
    `fit_batch` passes in a batch (`fantasy.weights.dit_choice`); `pipe.dit_choice` says what was picked and why.
    `comfy_models` (default `$FANTASY_COMFY_MODELS`): a ComfyUI models folder whose Wan files are used first
    (`fantasy.weights.comfy_folder`); `pipe.weight_files` names every model file read.
    Order matters: load the DiT (GGUF stays quantized; straight onto the GPU when it stays there),
    install the adapter (cast to `dtype`), load its weights, then torchao quantization or fp8 layerwise
    casting if asked (both skip the adapter by name), and only then offloading, so the adapter moves
    with its block. VAE, CLIP and wav2vec2 run in fp32; the VAE decodes in tiles above 512 px.
    `allow_cpu` exists for tests that push checkpoints through this exact path on a CPU.
    """
    from fantasy.weights.checkpoints import quiet_loading
    from fantasy.weights.comfy_folder import comfy_models_dir
    from fantasy.weights.dit_choice import DitChoice
    from fantasy.weights.offload import check_vram_mode
    from fantasy.weights.quantize import get_dit_mode

    if dit is not None:
        get_dit_mode(dit)
    check_vram_mode(vram)
    comfy = comfy_models_dir(comfy_models)
    device = resolve_device(device, allow_cpu)
    root = weights_dir(weights)
    choice = DitChoice(dit, False, "--dit") if dit is not None else _auto_dit(
        root, device, vram, fit_size, fit_frames, fit_batch, comfy)
    mode = get_dit_mode(choice.mode)
    if mode.torchao == "fp8":
        _check_fp8_support(device)
    paths = check_real_weights(root, choice.mode, adapter, comfy)
    if paths["comfy"]:
        used = ", ".join(f"{role.replace('_', ' ')} {path.name}" for role, path in paths["comfy"].items())
        print(f"from the ComfyUI folder {comfy}: {used}", file=sys.stderr)
        for note in paths["comfy_notes"]:
            print(f"note: chose {note}", file=sys.stderr)
    with quiet_loading():
        pipe = _load_components(paths, mode, vram, device, dtype)
    pipe.dit_choice = choice
    pipe.weight_files = {"dit": paths["dit"], **paths["comfy"]}
    return pipe


def _load_components(paths: dict, mode, vram: str, device: torch.device, dtype: torch.dtype):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Model

    from fantasy.model.adapter import AudioProjModel, audio_processors
    from fantasy.model.assemble import assemble
    from fantasy.model.sampling import make_scheduler
    from fantasy.weights.checkpoints import pretrained_class
    from fantasy.weights.offload import apply_vram_mode
    from fantasy.weights.quantize import enable_fp8_storage, quantize_weight_only
    from fantasy.weights.trained_modules import load_modules

    wav2vec, adapter_path = paths["wav2vec"], paths["adapter"]
    # Straight onto the GPU when the DiT stays there as loaded; torchao and fp8 storage shrink it first.
    direct = vram == "resident" and not mode.torchao and not mode.fp8_storage
    transformer = _load_transformer(paths, dtype, device if direct else None)
    # The released wav2vec2-base-960h is a CTC checkpoint: load it as one (no "unexpected lm_head"), keep the encoder.
    speech_class = pretrained_class(wav2vec, {"Wav2Vec2ForCTC": Wav2Vec2ForCTC}, Wav2Vec2Model)
    audio_encoder = speech_class.from_pretrained(wav2vec, dtype=torch.float32)
    audio_encoder = getattr(audio_encoder, "wav2vec2", audio_encoder).eval()
    audio_dim, context_dim = _adapter_dims(adapter_path, audio_encoder.config.hidden_size)
    tokenizer, text_encoder = _load_text_side(paths, dtype)
    image_encoder, image_processor = _load_image_side(paths)
    components = {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": enable_vae_tiling(_load_vae(paths)),
        "scheduler": make_scheduler(),
        "image_encoder": image_encoder,
        "image_processor": image_processor,
        "transformer": transformer,
        "audio_encoder": audio_encoder,
        "feature_extractor": Wav2Vec2FeatureExtractor.from_pretrained(wav2vec),
        "audio_proj": AudioProjModel(audio_dim=audio_dim, context_dim=context_dim),
    }
    pipe = assemble(components, None)  # no move: the DiT may already be on the GPU
    for processor in audio_processors(pipe.transformer):
        processor.to(dtype)  # the DiT's first parameter may be GGUF/fp32; the adapter computes in `dtype`
    load_modules(pipe, adapter_path)  # a training checkpoint also installs its motion / identity modules
    if mode.torchao:  # on the GPU when it stays there (fast, no round trip); the adapter is skipped by name
        quantize_weight_only(pipe.transformer, mode.torchao, device=device if vram == "resident" else None)
    if mode.fp8_storage:
        enable_fp8_storage(pipe.transformer, dtype)
    apply_vram_mode(pipe, vram, device)
    return pipe


def _load_transformer(paths: dict, dtype: torch.dtype, device: torch.device | None):
    """The DiT: a ComfyUI/kijai single file (its config read from its shapes), else our layout's file + config."""
    from fantasy.weights.quantize import load_single_file_transformer

    if "dit" in paths["comfy"]:
        from fantasy.weights.wan_files import load_dit_file

        return load_dit_file(paths["dit"], dtype, device)
    return load_single_file_transformer(paths["dit"], paths["wan"] / "transformer", compute_dtype=dtype,
                                        gguf=paths["dit"].suffix == ".gguf", device=device)


def _load_text_side(paths: dict, dtype: torch.dtype):
    """(tokenizer, umT5): ComfyUI's single file (with the tokenizer it carries), else Wan-AI's folders."""
    from transformers import AutoTokenizer

    comfy, wan = paths["comfy"], paths["wan"]
    if "text_encoder" in comfy:
        from fantasy.weights.umt5_file import load_umt5_file, umt5_tokenizer

        tokenizer = umt5_tokenizer(comfy["text_encoder"])
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(wan / "tokenizer")
        return tokenizer, load_umt5_file(comfy["text_encoder"], dtype)
    return AutoTokenizer.from_pretrained(wan / "tokenizer"), load_text_encoder(wan / "text_encoder", dtype)


def _load_image_side(paths: dict):
    """(CLIP vision tower in fp32, its processor): ComfyUI's single file, else Wan-AI's folders."""
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    from fantasy.weights.checkpoints import pretrained_class

    comfy, wan = paths["comfy"], paths["wan"]
    if "clip_vision" in comfy:
        from fantasy.model.clip_processor import clip_image_processor_class
        from fantasy.weights.clip_vision_file import load_clip_vision_file

        encoder = load_clip_vision_file(comfy["clip_vision"], torch.float32)
        side = encoder.config.image_size  # CLIP's mean and std are the processor's defaults, as in Wan-AI's folder
        return encoder, clip_image_processor_class()(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    clip_class = pretrained_class(wan / "image_encoder", {"CLIPVisionModelWithProjection": CLIPVisionModelWithProjection},
                                  CLIPVisionModel)
    return clip_class.from_pretrained(wan / "image_encoder", dtype=torch.float32).eval(), _image_processor(wan / "image_processor")


def _load_vae(paths: dict):
    from diffusers import AutoencoderKLWan

    if "vae" in paths["comfy"]:
        from fantasy.weights.wan_files import load_vae_file

        return load_vae_file(paths["comfy"]["vae"], torch.float32)
    return AutoencoderKLWan.from_pretrained(paths["wan"] / "vae", dtype=torch.float32)


def load_text_encoder(folder: str | Path, dtype: torch.dtype = torch.bfloat16):
    """umT5 from Wan-AI's `text_encoder/` (fp32 shards) in `dtype`, one shard at a time (`fantasy.weights.checkpoints`)."""
    from transformers import UMT5EncoderModel

    from fantasy.weights.checkpoints import load_sharded

    return load_sharded(UMT5EncoderModel, folder, dtype)


def _image_processor(folder: Path):
    """CLIP's processor config (only its mean and std are used: the portrait is squashed as the release does)."""
    from fantasy.model.clip_processor import clip_image_processor_class

    return clip_image_processor_class().from_pretrained(folder)
