"""Reading the real preset's weight files without holding more host RAM than the loaded models, and quietly.

Measured at real width (tests/test_real_width.py, `tools/host_memory.py`): the stock loaders peak well
above what they keep, because they hold a second copy of the file while converting.

- GGUF DiT: diffusers' `load_gguf_checkpoint` copies every tensor out of gguf's memory map
  (`tensor.data.copy()`, diffusers 0.42.1), so the process holds the file twice (2.1x the file in
  resident memory). `gguf_state_dict` hands diffusers views of a copy-on-write map instead (gguf's
  own reader, mode "c"): nothing is copied until a weight moves to the GPU, one tensor at a time.
- umT5 (Wan-AI ships it sharded, in fp32): transformers 5 maps every shard for the whole load, so the
  fp32 files (2x the bf16 model) stay resident next to the bf16 result (3x in all). accelerate's
  `load_checkpoint_in_model` goes shard by shard, converting each tensor straight from the mapped
  shard into the target dtype: bf16 model + one shard's mapped pages.
- The bf16 single file needs nothing of ours: safetensors 0.8 serves it memory-mapped, and diffusers'
  loader takes those tensors as they are (or moves them to the GPU one by one with `device=`).

`pretrained_class` loads a checkpoint into the class its config names, so a released
`Wav2Vec2ForCTC` (with an `lm_head`) or `CLIPVisionModelWithProjection` loads without transformers'
"UNEXPECTED" key report; `quiet_loading` hides the libraries' per-file progress bars while loading.
Warnings stay on: a real mismatch must still be seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from fantasy.errors import CheckpointMismatch


def gguf_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a GGUF file as views of its memory map (quantized ones as diffusers' `GGUFParameter`).

    The same tensors diffusers' `load_gguf_checkpoint` returns, minus its copy of each one. The map is
    copy-on-write ("c"): writable for torch, and the file on disk is never changed.
    """
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter

    reader = gguf.GGUFReader(str(path), "c")
    plain = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    state = {}
    for tensor in reader.tensors:
        data = torch.from_numpy(tensor.data)
        state[tensor.name] = data if tensor.tensor_type in plain else GGUFParameter(data, quant_type=tensor.tensor_type)
    return state


def index_shards(index: str | Path) -> list[str]:
    """The shard file names a `*.safetensors.index.json` names, sorted."""
    try:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointMismatch(f"{index} is not a readable shard index ({type(exc).__name__}: {exc})") from None


def load_sharded(model_class, folder: str | Path, dtype: torch.dtype, device: str | torch.device = "cpu"):
    """`model_class` from a transformers folder (config.json + sharded safetensors), one shard at a time.

    Built on the meta device (accelerate's `init_empty_weights`), filled by accelerate's
    `load_checkpoint_in_model`, tied, and checked: every parameter and buffer must come from the
    files, or `CheckpointMismatch` names the missing ones.
    """
    from accelerate import init_empty_weights
    from accelerate.utils import load_checkpoint_in_model

    folder = Path(folder)
    config = model_class.config_class.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    load_checkpoint_in_model(model, str(folder), device_map={"": str(device)}, dtype=dtype)
    model.tie_weights()
    missing = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if missing:
        shown = ", ".join(missing[:6]) + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else "")
        raise CheckpointMismatch(f"{folder}: the checkpoint lacks {len(missing)} of the model's tensors: {shown}")
    return model.eval()


def pretrained_class(folder: str | Path, classes: dict[str, type], default: type) -> type:
    """The class among `classes` that `config.json`'s `architectures` names, else `default`."""
    try:
        names = json.loads((Path(folder) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        names = []
    return next((classes[name] for name in names if name in classes), default)


@contextmanager
def dropped_log_messages(logger_name: str, prefix: str) -> Iterator[None]:
    """Drop one logger's records that start with `prefix` (a single known message, not a whole logger)."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    logger = logging.getLogger(logger_name)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No per-file progress bars from transformers or diffusers while models load (restored afterwards)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    switches = [(lib, lib.is_progress_bar_enabled()) for lib in (transformers_logging, diffusers_logging)]
    for lib, _ in switches:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was_on in switches:
            if was_on:
                lib.enable_progress_bar()
