"""diffusers `WanTransformer3DModel` parameter names -> the original Wan2.1 names.

Single-file checkpoints (city96's GGUF, Comfy-Org's bf16 repack, the Wan-AI release) use the
original names, and diffusers' `convert_wan_transformer_to_diffusers` maps them forward. diffusers
has no inverse, so this is ours (reference/diffusers-wan.md §6). It lets tests and the GPU benchmark
write checkpoints with the real key layout and push them through the same `from_single_file` path
as the downloaded files. The one trap: the affine cross-attention norm is `norm2` in diffusers and
`norm3` in the original (the original's `norm2` is the FFN norm, which has no parameters).
"""

from __future__ import annotations

import re

# Ordered: the first matching rule wins. Each maps a full diffusers key to its original spelling.
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r) for p, r in [
        (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
        (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
        (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
        (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
        (r"^condition_embedder\.time_proj\.", "time_projection.1."),
        (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
        (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
        (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
        (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
        (r"^proj_out\.", "head.head."),
        (r"^scale_shift_table$", "head.modulation"),
        (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
        (r"^blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.self_attn.\2."),
        (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
        (r"^blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
        (r"^blocks\.(\d+)\.attn2\.to_([qkv])\.", r"blocks.\1.cross_attn.\2."),
        (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
        (r"^blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
        (r"^blocks\.(\d+)\.attn2\.add_([kv])_proj\.", r"blocks.\1.cross_attn.\2_img."),
        (r"^blocks\.(\d+)\.attn2\.norm_added_k\.", r"blocks.\1.cross_attn.norm_k_img."),
        (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),  # the affine cross-attention norm
        (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
        (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
        (r"^patch_embedding\.", "patch_embedding."),
    ]
]


def to_original_key(key: str) -> str:
    """One diffusers key -> its original Wan name; `KeyError` for a key the I2V model does not have."""
    for pattern, replacement in _RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)  # anchored at ^: one substitution at most
    raise KeyError(f"no original Wan name for diffusers key '{key}'")


def to_original_state_dict(state: dict) -> dict:
    """A diffusers I2V transformer state dict under the original Wan key names (values untouched)."""
    renamed = {to_original_key(k): v for k, v in state.items()}
    if len(renamed) != len(state):
        raise ValueError("two diffusers keys map to the same original name")
    return renamed
