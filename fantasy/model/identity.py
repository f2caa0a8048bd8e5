"""Facial-focused identity cross-attention: the paper's replacement for a reference network.

The portrait's face (its landmark box from the face backend, dlib by default, grown to a square) goes
through the pipeline's own CLIP vision encoder; its penultimate tokens are the identity context. In
every block's cross-attention an `IdentityBranch` lets the video tokens (the block's own normalised
query, as the audio branch does) attend to those face tokens through zero-initialised K/V projections,
and the result is added before `to_out`, beside text, image and audio. Zero K/V give exactly zero, so
an installed, untrained branch leaves the model stock. The official release has no such weights;
`python -m fantasy train` learns them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fantasy.model.adapter import audio_processors

IDENTITY_MODULE_NAME = "identity"  # the branch's attribute on each attn2 processor (and its key part)
FACE_EXPAND = 1.4  # crop side = 1.4 x the larger face-box side: forehead, chin and cheeks, little background


class IdentityBranch(nn.Module):
    """Zero-initialised K/V from face tokens (CLIP hidden size) to the block's inner dim."""

    def __init__(self, token_dim: int, inner_dim: int):
        super().__init__()
        self.k_proj = nn.Linear(token_dim, inner_dim, bias=False)
        self.v_proj = nn.Linear(token_dim, inner_dim, bias=False)
        nn.init.zeros_(self.k_proj.weight)
        nn.init.zeros_(self.v_proj.weight)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """query [B, S, H, D], tokens [B or 1, N, C] -> [B, S, H * D]; every video token sees every face token."""
        batch, seq, heads, head_dim = query.shape
        tokens = tokens.to(device=query.device, dtype=self.k_proj.weight.dtype)
        if tokens.shape[0] != batch:
            tokens = tokens.expand(batch, -1, -1)
        k = self.k_proj(tokens).unflatten(2, (heads, head_dim)).transpose(1, 2)
        v = self.v_proj(tokens).unflatten(2, (heads, head_dim)).transpose(1, 2)
        out = F.scaled_dot_product_attention(query.transpose(1, 2).to(k.dtype), k, v)
        return out.transpose(1, 2).reshape(batch, seq, heads * head_dim).type_as(query)


@dataclass
class IdentityContext:
    """The face tokens of the current transformer call, shared by every block (None: branch off)."""

    tokens: torch.Tensor | None = None
    scale: float = 1.0

    @contextmanager
    def use(self, tokens: torch.Tensor | None, scale: float = 1.0):
        previous = (self.tokens, self.scale)
        self.tokens, self.scale = tokens, scale
        try:
            yield self
        finally:
            self.tokens, self.scale = previous

    @property
    def active(self) -> bool:
        return self.tokens is not None and self.scale != 0


def install_identity_module(transformer, token_dim: int) -> IdentityContext:
    """Add a zero-initialised `IdentityBranch` to every audio processor; return the shared context.

    Needs the audio adapter installed first (the branch lives in its processor, so it follows the
    block through offloading and is skipped by quantization with the rest of the adapter).
    """
    context = IdentityContext()
    for block, processor in zip(transformer.blocks, audio_processors(transformer), strict=True):
        if processor.identity is not None:
            raise RuntimeError("an identity module is already installed on this transformer")
        weight = processor.k_proj.weight
        branch = IdentityBranch(token_dim, block.attn2.inner_dim).to(device=weight.device, dtype=weight.dtype)
        processor.identity = branch
        processor.identity_context = context
    return context


def has_identity_module(transformer) -> bool:
    return any(getattr(p, "identity", None) is not None for p in (b.attn2.processor for b in transformer.blocks))


def face_crop(portrait: Image.Image, box) -> Image.Image:
    """The square crop the identity branch sees, in training and inference alike (`fantasy.face.square_face_crop`)."""
    from fantasy.face import square_face_crop

    return Image.fromarray(square_face_crop(np.asarray(portrait.convert("RGB")), box, expand=FACE_EXPAND))


def portrait_face_crop(portrait: Image.Image, analyzer=None) -> Image.Image:
    """The portrait's face crop, around its landmark box as in training (`fantasy.train.cache`).

    The most confident face; `NoFaceFound` is the user's error. `analyzer` defaults to the process's
    shared one (dlib, or `$FANTASY_FACE_BACKEND`), whose models ship with `requirements.txt`.
    """
    from fantasy.face import FaceBox, shared_analyzer

    analyzer = analyzer or shared_analyzer()
    rgb = np.asarray(portrait.convert("RGB"))
    box = analyzer.require_face(rgb)
    points = analyzer.landmarks(rgb, box=box)
    return face_crop(portrait, box if points is None else FaceBox.from_landmarks(points))
