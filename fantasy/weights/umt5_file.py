"""Wan's umT5-XXL text encoder from one single file, as ComfyUI and kijai ship it, and its tokenizer.

Two key spellings exist (read from ComfyUI's `comfy/text_encoders/t5.py` + `wan.py` and from kijai's
WanVideoWrapper `wanvideo/modules/t5.py`):

- ComfyUI (`umt5_xxl_fp16.safetensors`, `umt5_xxl_fp8_e4m3fn_scaled.safetensors`): transformers' own names
  (`shared.weight`, `encoder.block.N.layer.0.SelfAttention.q.weight`, ...), sometimes under
  `text_encoders.umt5xxl.transformer.`; the tokenizer's SentencePiece model rides along as a uint8 tensor
  `spiece_model`, and the scaled fp8 file adds `scale_weight`s (`fantasy.weights.scaled_fp8`).
- the original Wan code's (kijai's `umt5-xxl-enc-bf16.safetensors`): `token_embedding.weight`,
  `blocks.N.attn.q.weight`, `blocks.N.ffn.gate.0.weight` (the GELU branch), `blocks.N.ffn.fc1.weight`,
  `blocks.N.pos_embedding.embedding.weight` (umT5: one relative position table per layer), `norm.weight`.

Both load into transformers' `UMT5EncoderModel`, whose sizes are read from the tensors' shapes, so the same
code serves the 24-layer release and the reduced-depth files the tests write.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fantasy.errors import CheckpointMismatch
from fantasy.weights.single_file import (
    Header,
    block_count,
    check_names,
    read_header,
    read_tensors,
    strip_prefix,
)

SPIECE_KEY = "spiece_model"
PREFIXES = ("text_encoders.umt5xxl.transformer.", "umt5xxl.transformer.")
EXTRA_IDS = 300  # google/umt5-xxl's sentinel tokens, ids 256000.. (<extra_id_299> first)
T5_VOCAB = 32128  # T5-XXL (Flux, SD3), not umT5
_WAN_TO_HF = [(re.compile(pattern), replacement) for pattern, replacement in [
    (r"^token_embedding\.weight$", "shared.weight"),
    (r"^norm\.weight$", "encoder.final_layer_norm.weight"),
    (r"^blocks\.(\d+)\.norm1\.weight$", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.weight$", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.weight$",
     r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight"),
    (r"^blocks\.(\d+)\.norm2\.weight$", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc1\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc2\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
]]


def wan_key_to_hf(key: str) -> str | None:
    """An original-Wan umT5 key -> transformers' name (None for a key umT5's encoder does not have)."""
    for pattern, replacement in _WAN_TO_HF:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def _hf_shapes(header: Header) -> tuple[dict[str, tuple[int, ...]], bool]:
    """The header's shapes under transformers' names, and whether the file spells keys as Wan's code does."""
    shapes = strip_prefix({k: v for k, v in header.shapes.items() if k != SPIECE_KEY}, PREFIXES)
    if "token_embedding.weight" not in shapes:
        return shapes, False
    converted = ((wan_key_to_hf(key), shape) for key, shape in shapes.items())
    return {key: shape for key, shape in converted if key is not None}, True


def check_umt5_header(header: Header) -> str:
    """'comfy' or 'wan' (the key spelling); `CheckpointMismatch` for anything that is not a umT5 encoder."""
    shapes, wan = _hf_shapes(header)
    what = f"{header.path.name} is not Wan's umT5-XXL text encoder (umt5_xxl_*.safetensors)"
    if "shared.weight" not in shapes or "encoder.block.0.layer.0.SelfAttention.q.weight" not in shapes:
        sample = ", ".join(list(header.keys())[:3])
        raise CheckpointMismatch(f"{what}: it has no umT5 encoder weights (first keys: {sample})")
    if any(".DenseReluDense.wi." in key for key in shapes):
        raise CheckpointMismatch(f"{what}: it is an original (non-gated) T5")
    layers = block_count(shapes, "encoder.block.")
    per_layer_bias = all(f"encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight" in shapes
                         for i in range(layers))
    if shapes["shared.weight"][0] == T5_VOCAB or not per_layer_bias:
        raise CheckpointMismatch(f"{what}: it is T5-XXL (Flux's and SD3's, one shared position table), not umT5")
    return "wan" if wan else "comfy"


def umt5_config(shapes: dict[str, tuple[int, ...]]):
    """`UMT5Config` of the encoder these (transformers-named) tensor shapes belong to."""
    from transformers import UMT5Config

    vocab, d_model = shapes["shared.weight"]
    buckets, heads = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    return UMT5Config(
        vocab_size=vocab, d_model=d_model, d_kv=shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0] // heads,
        d_ff=shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0], num_layers=block_count(shapes, "encoder.block."),
        num_heads=heads, relative_attention_num_buckets=buckets, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", tie_word_embeddings=False, is_encoder_decoder=True,
    )


def hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A umT5 file's tensors under transformers' names (prefix stripped, Wan's names converted, tokenizer out)."""
    state = strip_prefix({k: v for k, v in state.items() if k != SPIECE_KEY}, PREFIXES)
    if "token_embedding.weight" in state:
        converted = {}
        for key, value in state.items():
            new = wan_key_to_hf(key)
            if new is None:
                raise CheckpointMismatch(f"unexpected tensor '{key}' in a umT5 file with Wan's key names")
            converted[new] = value
        return converted
    return state


def load_umt5_file(path: str | Path, dtype: torch.dtype = torch.bfloat16):
    """`UMT5EncoderModel` in `dtype` from a ComfyUI/kijai single file (16-bit, fp8 or scaled fp8)."""
    from accelerate import init_empty_weights
    from transformers import UMT5EncoderModel

    from fantasy.weights.scaled_fp8 import dequantize

    path = Path(path)
    check_umt5_header(read_header(path))
    state = dequantize(hf_state(read_tensors(path)), dtype)
    config = umt5_config({key: tuple(value.shape) for key, value in state.items()})
    with init_empty_weights(include_buffers=False):
        model = UMT5EncoderModel(config)
    expected = set(model.state_dict()) - {"encoder.embed_tokens.weight"}  # tied to shared.weight
    state.pop("encoder.embed_tokens.weight", None)
    check_names(path, "umT5", expected, set(state))
    state = {key: value.to(dtype).contiguous() for key, value in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


def has_tokenizer(header: Header) -> bool:
    return SPIECE_KEY in header


def tokenizer_from_spiece(model_proto: bytes, extra_ids: int = EXTRA_IDS):
    """umT5's tokenizer from its SentencePiece model bytes, encoding exactly as `SentencePieceProcessor`
    (plus `</s>` at the end, as google/umt5-xxl's tokenizer does); the sentinels `<extra_id_{extra_ids-1}>`
    ... `<extra_id_0>` follow the pieces, as in google/umt5-xxl.

    transformers' `SpmConverter.build_tokenizer_from_spm_proto` follows the model's own normalizer settings;
    `T5Tokenizer.from_pretrained` on a bare `spiece.model` would assume T5's unknown-token id (2; umT5's is 3).
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_proto)
    except Exception as exc:  # protobuf's DecodeError
        raise CheckpointMismatch(f"the umT5 file's '{SPIECE_KEY}' is not a SentencePiece model ({exc})") from None
    if not proto.pieces:
        raise CheckpointMismatch(f"the umT5 file's '{SPIECE_KEY}' holds an empty SentencePiece model")
    spec = proto.trainer_spec
    pieces = [piece.piece for piece in proto.pieces]
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, [(p.piece, p.score) for p in proto.pieces])
    eos = pieces[spec.eos_id]
    backend.post_processor = processors.TemplateProcessing(single=["$A", eos], pair=["$A", eos, "$B", eos],
                                                           special_tokens=[(eos, spec.eos_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=pieces[spec.pad_id],
                                        unk_token=pieces[spec.unk_id])
    tokenizer.add_special_tokens({"additional_special_tokens": [f"<extra_id_{i}>" for i in reversed(range(extra_ids))]})
    return tokenizer


def umt5_tokenizer(path: str | Path):
    """The tokenizer a ComfyUI umT5 file carries (`spiece_model`), or None when it carries none."""
    path = Path(path)
    if not has_tokenizer(read_header(path)):
        return None
    raw = read_tensors(path, [SPIECE_KEY])[SPIECE_KEY]
    return tokenizer_from_spiece(raw.numpy().tobytes())
