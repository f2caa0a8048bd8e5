"""Random-weight files in the *released* layouts, so the real preset's loaders can run without a download.

Each writer produces the files a user downloads, under their real names and key spellings, filled
with random weights at any depth (the real widths always; fewer layers where asked):

- city96's GGUF of the DiT (`wan2.1-i2v-14b-720p-Q8_0.gguf`): original Wan key names and city96's tensor
  type mix (reference/turn2-findings.md §4): 2-D weights Q8_0, `time_embedding.*` weights F16, 1-D
  tensors and `*.modulation` F32, the 5-D `patch_embedding` F32. Written one tensor at a time with
  gguf-py's writer (header and tensor infos first, then each tensor's bytes), so a 17 GB file needs
  no 17 GB in memory. Q8_0 blocks are random bytes with a fixed fp16 scale (weights uniform in
  ±0.0127): quantizing real floats would take minutes at full size and change nothing we measure.
- Comfy-Org's bf16 single file (`wan2.1_i2v_720p_14B_bf16.safetensors`): original key names.
- Wan-AI's diffusers folder: a sharded fp32 umT5 (`model-0000N-of-0000M.safetensors` + index),
  CLIP ViT-H/14, the Wan VAE, the processor, the transformer config and a tokenizer (`tokenizer.json`:
  a word-level vocabulary, so a reduced umT5 vocabulary still covers every id).
- facebook/wav2vec2-base-960h: a `Wav2Vec2ForCTC` checkpoint (an `lm_head`) whose positional
  convolution is stored as `weight_g`/`weight_v`, like the file on the Hub.
- FantasyTalking's `fantasytalking_model.ckpt`: the fp32 pickle of `proj_model` + `audio_processor`.

Used by the real-width tests (tests/test_real_width.py) and the one-shot GPU check (tools/gpu_check.py).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from fantasy.bench.models import FULL

Q8_0_SCALE = np.float16(1e-4)  # weights of a random Q8_0 block: int8 x 1e-4, i.e. uniform in +-0.0127
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False, dense_act_fn="gelu_new",
                is_encoder_decoder=True, model_type="umt5")
CLIP_VIT_H14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                    image_size=224, patch_size=14, hidden_act="gelu", projection_dim=1024, layer_norm_eps=1e-5)
AUDIO_DIM, CONTEXT_DIM = 768, 2048  # wav2vec2-base hidden size, FantasyTalking's audio projection
WORDS = ("a", "the", "person", "man", "woman", "is", "are", "talking", "speaking", "smiling", "looking", "at",
         "camera", "with", "and", "of", "in", "on", "head", "hands", "moving", "body", "still", "motionless",
         "calmly", "his", "her", "face", "mouth", "eyes", "background", "video", "portrait", "happy", "sad")


def dit_config(num_layers: int = 40) -> dict:
    """The Wan2.1-I2V-14B-720P transformer config (`transformer/config.json`), at `num_layers` blocks."""
    return dict(FULL["config"], num_layers=num_layers)


def _meta_state(config: dict) -> dict[str, torch.Size]:
    """Original-Wan names -> shapes of the transformer for `config`, without allocating it."""
    from diffusers import WanTransformer3DModel

    from fantasy.weights.wan_keys import to_original_key

    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    return {to_original_key(k): v.shape for k, v in model.state_dict().items()}


def city96_type(name: str, shape: tuple[int, ...]):
    """The GGML type city96's Q8_0 file stores a tensor as (see the module docstring)."""
    import gguf

    types = gguf.GGMLQuantizationType
    if len(shape) != 2 or name.endswith(".modulation"):
        return types.F32  # 1-D tensors, modulation tables, the 5-D patch embedding
    if name.startswith("time_embedding."):
        return types.F16
    return types.Q8_0


class RandomPool:
    """Random values for big tensors, fast: copies of one random pool taken at random offsets.

    Not independent draws (a 16 B-parameter file would take minutes of `torch.randn` on a CPU), but
    loaders, memory and timings see ordinary random weights: nothing here depends on the values.
    """

    def __init__(self, seed: int = 0, size: int = 1 << 22):
        self.gen = torch.Generator().manual_seed(seed)
        self.normal = {torch.float32: torch.randn(size, generator=self.gen).mul_(0.02)}  # std 0.02, per dtype
        self.bytes = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=self.gen)

    def take(self, source: torch.Tensor, count: int) -> torch.Tensor:
        out = torch.empty(count, dtype=source.dtype)
        done = 0
        while done < count:
            start = int(torch.randint(0, len(source) // 2, (1,), generator=self.gen))
            n = min(count - done, len(source) - start)
            out[done:done + n] = source[start:start + n]
            done += n
        return out

    def weights(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Weights that keep a forward pass finite: norm scales near 1, everything else small (std 0.02)."""
        if dtype not in self.normal:
            self.normal[dtype] = self.normal[torch.float32].to(dtype)
        values = self.take(self.normal[dtype], int(np.prod(shape))).view(shape)
        if len(shape) == 1 and "norm" in name and name.endswith(".weight"):
            values.add_(1)
        return values

    def q8_0(self, shape: tuple[int, ...]) -> np.ndarray:
        """Q8_0 bytes (rows x blocks of [fp16 scale, 32 int8]) for a float tensor of `shape`."""
        rows, cols = shape
        raw = self.take(self.bytes, rows * (cols // 32) * 34).numpy().reshape(rows, cols // 32, 34)
        raw[..., 0:2] = np.frombuffer(Q8_0_SCALE.tobytes(), dtype=np.uint8)
        return raw.reshape(rows, cols // 32 * 34)


def random_model(build, seed: int = 0) -> torch.nn.Module:
    """`build()` with random parameters from a `RandomPool` (built on the meta device: no slow init)."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    with init_empty_weights(include_buffers=False):
        model = build()
    pool = RandomPool(seed)
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.is_meta:
            set_module_tensor_to_device(model, name, "cpu", value=pool.weights(name, tuple(param.shape)))
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def city96_bytes(config: dict) -> int:
    """Tensor bytes of city96's Q8_0 file for `config` (17.43 GB at the full 40 blocks)."""
    import gguf

    total = 0
    for name, shape in _meta_state(config).items():
        kind = city96_type(name, tuple(shape))
        values, size = gguf.GGML_QUANT_SIZES[kind]
        total += int(np.prod(shape)) // values * size
    return total


def write_city96_gguf(path: str | Path, config: dict, seed: int = 0) -> dict[str, str]:
    """The DiT as city96's Q8_0 GGUF, streamed to disk; returns tensor name -> GGML type name."""
    import gguf

    shapes = _meta_state(config)
    types = {name: city96_type(name, tuple(shape)) for name, shape in shapes.items()}
    writer = gguf.GGUFWriter(str(path), arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for name, shape in shapes.items():
        kind = types[name]
        if kind == gguf.GGMLQuantizationType.Q8_0:
            byte_shape = (shape[0], shape[1] // 32 * 34)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=kind)
        else:
            dtype = np.float16 if kind == gguf.GGMLQuantizationType.F16 else np.float32
            writer.add_tensor_info(name, tuple(shape), np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    pool = RandomPool(seed)
    for name, shape in shapes.items():
        kind = types[name]
        if kind == gguf.GGMLQuantizationType.Q8_0:
            data = pool.q8_0(tuple(shape))
        else:
            dtype = torch.float16 if kind == gguf.GGMLQuantizationType.F16 else torch.float32
            data = pool.weights(name, tuple(shape), dtype).numpy()
        writer.write_tensor_data(data)
        del data
    writer.close()
    return {name: kind.name for name, kind in types.items()}


def write_bf16_single_file(path: str | Path, config: dict, seed: int = 0) -> int:
    """The DiT as Comfy-Org's bf16 safetensors (original key names); returns the tensor bytes."""
    from safetensors.torch import save_file

    pool = RandomPool(seed)
    state = {name: pool.weights(name, tuple(shape), torch.bfloat16) for name, shape in _meta_state(config).items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return sum(t.numel() * 2 for t in state.values())


def write_umt5_folder(folder: str | Path, num_layers: int = 24, vocab_size: int = 256384,
                      max_shard_size: str = "5GB", seed: int = 1) -> int:
    """Wan-AI's `text_encoder/`: umT5-XXL's encoder in fp32, sharded with an index; returns the parameter count."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(**dict(UMT5_XXL, num_layers=num_layers, vocab_size=vocab_size))
    model = random_model(lambda: UMT5EncoderModel(config), seed)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    return sum(p.numel() for p in model.parameters())


def write_tokenizer(folder: str | Path) -> None:
    """`tokenizer/`: tokenizer.json + tokenizer_config.json + special_tokens_map.json (word level, ids < 64)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(folder)
    (Path(folder) / "special_tokens_map.json").write_text(json.dumps(special))  # transformers 5 no longer writes it


def write_clip_folder(folder: str | Path, num_layers: int = 32, seed: int = 2) -> None:
    """Wan-AI's `image_encoder/`: CLIP ViT-H/14 as `CLIPVisionModelWithProjection`, fp16 (1.2 GB on the Hub)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**dict(CLIP_VIT_H14, num_hidden_layers=num_layers))
    random_model(lambda: CLIPVisionModelWithProjection(config), seed).half().save_pretrained(folder)


def write_image_processor(folder: str | Path) -> None:
    """Wan-AI's `image_processor/preprocessor_config.json` (224 px, CLIP's mean and std)."""
    from fantasy.model.clip_processor import clip_image_processor_class

    clip_image_processor_class()(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)


def write_vae_folder(folder: str | Path, seed: int = 3) -> None:
    """Wan-AI's `vae/`: the Wan2.1 VAE (diffusers' defaults are its configuration), fp32."""
    from diffusers import AutoencoderKLWan

    random_model(AutoencoderKLWan, seed).save_pretrained(folder)


def write_wav2vec2_folder(folder: str | Path, seed: int = 4) -> int:
    """facebook/wav2vec2-base-960h: a CTC checkpoint with `lm_head` and `weight_g`/`weight_v`; returns tensors."""
    from safetensors.torch import save_file
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    config = Wav2Vec2Config(vocab_size=32, architectures=["Wav2Vec2ForCTC"])
    model = random_model(lambda: Wav2Vec2ForCTC(config), seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    legacy = {".parametrizations.weight.original0": ".weight_g", ".parametrizations.weight.original1": ".weight_v"}
    state = {}
    for key, value in model.state_dict().items():
        for new, old in legacy.items():
            key = key.replace(new, old)
        state[key] = value.contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(folder)
    return len(state)


def official_adapter_state(num_blocks: int, inner_dim: int = 5120, seed: int = 5) -> dict:
    """The released `fantasytalking_model.ckpt` object: fp32 `proj_model` + `audio_processor` dicts."""
    gen = torch.Generator().manual_seed(seed)
    proj = OrderedDict([("proj.weight", 0.02 * torch.randn(CONTEXT_DIM, AUDIO_DIM, generator=gen)),
                        ("norm.weight", 1 + 0.02 * torch.randn(CONTEXT_DIM, generator=gen)),
                        ("norm.bias", 0.02 * torch.randn(CONTEXT_DIM, generator=gen))])
    processors = OrderedDict()
    for i in range(num_blocks):
        for name in "kv":
            processors[f"blocks.{i}.cross_attn.processor.{name}_proj.weight"] = \
                0.02 * torch.randn(inner_dim, CONTEXT_DIM, generator=gen)
    return {"proj_model": proj, "audio_processor": processors}


def write_official_ckpt(path: str | Path, num_blocks: int, inner_dim: int = 5120) -> int:
    """`fantasytalking_model.ckpt` as released (torch.save of the fp32 dicts); returns its tensor bytes."""
    state = official_adapter_state(num_blocks, inner_dim)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, str(path))
    return sum(t.numel() * 4 for group in state.values() for t in group.values())


def write_wan_folder(folder: str | Path, dit_layers: int, text_layers: int, text_vocab: int, clip_layers: int,
                     max_shard_size: str = "5GB") -> None:
    """Every file the loader reads from Wan-AI/Wan2.1-I2V-14B-720P-Diffusers, at the given depths."""
    from diffusers import WanTransformer3DModel

    folder = Path(folder)
    write_tokenizer(folder / "tokenizer")
    write_umt5_folder(folder / "text_encoder", text_layers, text_vocab, max_shard_size)
    write_clip_folder(folder / "image_encoder", clip_layers)
    write_image_processor(folder / "image_processor")
    write_vae_folder(folder / "vae")
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        WanTransformer3DModel(**dit_config(dit_layers)).save_config(folder / "transformer")
