"""Golden values of seeded tiny models, and the class head evaluated by hand (spec §5.1-5.5).

The golden values are this implementation's own (no reference outputs can be computed here):
they catch unintended numerical changes to encode, the samplers and the class head. The
hand-written head re-derives the head's maths in float64 from the spec, without dinac_ae.dit.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from diffae_core.testing import assert_close, randomize_weights, randomize_whitening
from dinac_ae import DinacAE, DinacAEInferenceConfig
from dinac_ae.family import FAMILY
from dinac_ae.model import DinoTokenAlignmentHead

WEIGHT_SCALE = 0.05
"""Std of the random weights: small enough that the 8-block decoder's outputs stay O(1)."""
GOLDEN_RTOL = 1e-5
GOLDEN_ATOL = 1e-5
"""Tight, not bitwise: CPU kernels may reorder float32 sums across torch builds."""
GOLDEN_BF16_ATOL = 1e-2
"""`predict_class` runs under bf16 autocast: one bf16 step near |x| = 2 is 2^-7 ~ 0.0078."""
HAND_ATOL = 1e-5
"""The float32 head against the float64 hand evaluation (outputs have unit RMS)."""

INDICES = {
    "latents": [0, 5, -1],
    "one_step": [0, 100, -1],
    "three_steps_pdg": [0, 100, -1],
    "predict_class": [0, 17, -1],
    "head_float32": [0, 17, -1],
}
# name: values at INDICES of (whitened latents, 1-step DDIM decode, 3-step DPM++(2M) cosine PDG
# decode, predict_class (bf16 autocast), the head's class token in float32 without autocast)
GOLDEN = {
    "dinac_ae": (
        (-0.3685686, -0.3002338, -0.5340444),
        (-0.07704484, 0.1311269, 0.05385945),
        (-0.07711305, 0.07821175, -0.05491536),
        (-0.08203125, -1.148438, -1.71875),
        (-0.08086663, -1.148127, -1.729536),
    ),
    "dinac_ae_d2": (
        (-0.6149494, -0.5549909, -0.6024365),
        (0.1021379, 0.1055554, -0.01848424),
        (0.20427, -0.0547636, -0.1167038),
        (1.3125, 2.296875, -0.2890625),
        (1.316514, 2.293152, -0.28182),
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_values(name: str) -> None:
    config = FAMILY.tiny_configs()[name]
    model = DinacAE(config)
    model = randomize_whitening(randomize_weights(model, scale=WEIGHT_SCALE)).eval()
    p = config.effective_patch_size
    height, width = 2 * p, 3 * p
    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(11)) * 2 - 1
    latents = model.encode(images)
    one_step = model.decode(
        latents, height, width, inference_config=DinacAEInferenceConfig(seed=42)
    )
    settings = DinacAEInferenceConfig(
        num_steps=3, sampler="dpmpp_2m", schedule="cosine", pdg=True, seed=42
    )
    outputs = {
        "latents": latents,
        "one_step": one_step,
        "three_steps_pdg": model.decode(latents, height, width, inference_config=settings),
        "predict_class": model.predict_class(latents),
        "head_float32": model.dino_token_alignment_head(model.dewhiten(latents)).class_token,
    }
    for (kind, indices), expected in zip(INDICES.items(), GOLDEN[name], strict=True):
        actual = outputs[kind].flatten()[indices]
        atol = GOLDEN_BF16_ATOL if kind == "predict_class" else GOLDEN_ATOL
        assert_close(actual, torch.tensor(expected), atol=atol, rtol=GOLDEN_RTOL)


# -- the class head by hand, float64 -----------------------------------------------------------
PREFIX_TOKENS = 5
"""class + 4 registers, rotated by zero (identity RoPE rows)."""


def rms(x: Tensor, weight: Tensor | None = None) -> Tensor:
    y = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6)
    return y if weight is None else y * weight


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def rope_by_hand(x: Tensor, height: int, width: int) -> Tensor:
    """x [N, heads, 5 + h*w, D]: pairs (2m, 2m+1) of spatial token y*w+x rotated per spec §5.2."""
    head_dim = x.shape[-1]
    out = x.clone()
    for token in range(height * width):
        coords = (token // width, token % width)
        for m in range(head_dim // 2):
            d = 2 * m
            axis, j = d // (head_dim // 2), (d % (head_dim // 2)) // 2
            angle = coords[axis] / 10000.0 ** (2 * j / (head_dim // 2))
            cos, sin = math.cos(angle), math.sin(angle)
            a, b = x[..., PREFIX_TOKENS + token, d], x[..., PREFIX_TOKENS + token, d + 1]
            out[..., PREFIX_TOKENS + token, d] = a * cos - b * sin
            out[..., PREFIX_TOKENS + token, d + 1] = b * cos + a * sin
    return out


def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.softmax(-1) @ v


def heads_of(x: Tensor, heads: int) -> Tensor:
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def merged(x: Tensor) -> Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def head_by_hand(w: dict[str, Tensor], latents: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    """Spec §5.5 in float64: raw latents [N, B, h, w] -> (class [N, D], spatial [N, h*w, D])."""
    n, _, height, width = latents.shape
    proj = w["in_proj.weight"][:, :, 0, 0]
    spatial = torch.einsum("nbyx,db->nyxd", latents, proj) + w["in_proj.bias"]
    spatial = spatial.reshape(n, height * width, -1)  # row-major tokens
    prefix = torch.cat([w["initial_class_token"], w["register_tokens"]])
    tokens = torch.cat([prefix.expand(n, -1, -1), spatial], dim=1)
    # DiT block: sandwich norms, QK-norm, RoPE on spatial tokens only.
    qkv = rms(tokens, w["block.attn_norm1._impl.weight"]) @ w["block.qkv.weight"].T
    q, k, v = (heads_of(part, heads) for part in qkv.chunk(3, dim=-1))
    q = rope_by_hand(rms(q, w["block.attn_core.q_norm._impl.weight"]), height, width)
    k = rope_by_hand(rms(k, w["block.attn_core.k_norm._impl.weight"]), height, width)
    attn = merged(attend(q, k, v)) @ w["block.proj_out.weight"].T
    x = tokens + rms(attn, w["block.attn_norm2._impl.weight"])
    hidden = gelu(rms(x, w["block.mlp_norm1._impl.weight"]) @ w["block.mlp.up.weight"].T)
    x = x + rms(hidden @ w["block.mlp.down.weight"].T, w["block.mlp_norm2._impl.weight"])
    # Cross-attention readout: the class token reads registers + spatial tokens.
    query, context = x[:, :1], x[:, 1:]
    r = "class_readout."
    q = rms(query, w[r + "query_norm._impl.weight"]) @ w[r + "q_proj.weight"].T
    kv = rms(context, w[r + "context_norm._impl.weight"]) @ w[r + "kv_proj.weight"].T
    k, v = kv.chunk(2, dim=-1)
    q = rms(heads_of(q, heads), w[r + "attn_core.q_norm_heads._impl.weight"])
    k = rms(heads_of(k, heads), w[r + "attn_core.k_norm_heads._impl.weight"])
    attn = merged(attend(q, k, heads_of(v, heads))) @ w[r + "out_proj.weight"].T
    y = query + attn
    hidden = gelu(rms(y, w[r + "mlp_norm._impl.weight"]) @ w[r + "mlp.up.weight"].T)
    y = y + hidden @ w[r + "mlp.down.weight"].T
    return rms(y[:, 0]), rms(x[:, PREFIX_TOKENS:])


def test_class_head_matches_a_hand_evaluation() -> None:
    head = DinoTokenAlignmentHead(
        latent_channels=4,
        model_dim=64,
        heads=2,
        mlp_ratio=4.0,
        mlp_type="gelu",
        register_token_count=4,
    )
    randomize_weights(head, seed=3, scale=0.3)
    latents = torch.randn(2, 4, 2, 3, generator=torch.Generator().manual_seed(4))
    weights = {key: value.double() for key, value in head.state_dict().items()}
    class_token, spatial = head_by_hand(weights, latents.double(), heads=2)
    alignment = head(latents)
    assert_close(alignment.class_token, class_token, atol=HAND_ATOL)
    assert_close(alignment.spatial_tokens, spatial, atol=HAND_ATOL)
