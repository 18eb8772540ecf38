"""Golden values of seeded tiny models, and the class head evaluated by hand.

The golden values are this implementation's own (no reference outputs can be computed here),
recorded from a float64 run so that they hold on any CPU: they catch unintended numerical
changes to encode, the samplers and the class head. Re-record (after a deliberate change) with
`uv run python packages/dinac_ae/tests/test_dinac_ae_reference_values.py`. The hand-written
head re-derives the head's maths in float64 from the spec, without dinac_ae.dit.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from diffae_testing import (
    FLOAT32_GOLDEN_TOLERANCE,
    assert_matches_golden,
    golden_values,
    randomize_weights,
    randomize_whitening,
    to_float64,
)
from dinac_ae import DinacAE, DinacAEInferenceConfig
from dinac_ae.family import FAMILY
from dinac_ae.model import DinoTokenAlignmentHead

WEIGHT_SCALE = 0.05
"""Std of the random weights: small enough that the 8-block decoder's outputs stay O(1)."""

INDICES = {
    "latents": [0, 5, -1],
    "one_step": [0, 100, -1],
    "three_steps_pdg": [0, 100, -1],
    "three_steps_ddim_pdg": [0, 100, -1],
    "class_token": [0, 17, -1],
}
# name: {output: values at INDICES} of the float64 run: whitened latents, 1-step DDIM decode,
# 3-step DPM++(2M) cosine PDG decode, 3-step DDIM linear PDG decode, the class head's class
# token (float64, no autocast).
GOLDEN = {
    "dinac_ae": {
        "latents": (-0.3685685, -0.3002337, -0.5340444),
        "one_step": (-0.07704502, 0.1311271, 0.05385942),
        "three_steps_pdg": (-0.07711314, 0.07821211, -0.05491452),
        "three_steps_ddim_pdg": (-0.06449331, 0.1350465, 0.03278868),
        "class_token": (-0.08086653, -1.148127, -1.729535),
    },
    "dinac_ae_d2": {
        "latents": (-0.6149495, -0.5549909, -0.6024365),
        "one_step": (0.1021378, 0.1055552, -0.01848385),
        "three_steps_pdg": (0.2042696, -0.05476274, -0.1167041),
        "three_steps_ddim_pdg": (0.1108634, 0.02860259, -0.04348163),
        "class_token": (1.316514, 2.293153, -0.2818198),
    },
}


def golden_outputs(name: str, *, float64: bool = False) -> dict[str, Tensor]:
    """The outputs at float32 (or float64) weights; with float32 weights, also
    `predict_class` (bf16 autocast, as the reference) and the head in float32 without autocast.
    """
    config = FAMILY.tiny_configs()[name]
    model = DinacAE(config)
    model = randomize_whitening(randomize_weights(model, scale=WEIGHT_SCALE)).eval()
    if float64:
        to_float64(model)
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
    ddim = DinacAEInferenceConfig(num_steps=3, sampler="ddim", pdg=True, seed=42)
    raw_latents = model.dewhiten(latents).to(model.ordinary_weight_storage_dtype)
    outputs = {
        "latents": latents,
        "one_step": one_step,
        "three_steps_pdg": model.decode(latents, height, width, inference_config=settings),
        "three_steps_ddim_pdg": model.decode(latents, height, width, inference_config=ddim),
        "class_token": model.dino_token_alignment_head(raw_latents).class_token,
    }
    if not float64:
        outputs["predict_class"] = model.predict_class(latents)
    return outputs


@pytest.mark.values
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_values(name: str) -> None:
    outputs = golden_outputs(name)
    for kind, indices in INDICES.items():
        assert outputs[kind].dtype == torch.float32
        assert_matches_golden(outputs[kind].flatten()[indices], GOLDEN[name][kind])
    # predict_class runs the same head under bf16 autocast: bf16 steps from the same values.
    predicted = outputs["predict_class"]
    assert predicted.dtype == torch.float32
    assert_matches_golden(
        predicted.flatten()[INDICES["class_token"]], GOLDEN[name]["class_token"], torch.bfloat16
    )


# -- the class head by hand, float64 -----------------------------------------------------------
PREFIX_TOKENS = 5
"""class + 4 registers, rotated by zero (identity RoPE rows)."""


def rms(x: Tensor, weight: Tensor | None = None) -> Tensor:
    y = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6)
    return y if weight is None else y * weight


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def rope_by_hand(x: Tensor, height: int, width: int) -> Tensor:
    """x [N, heads, 5 + h*w, D]: pairs (2m, 2m+1) of spatial token y*w+x rotated by axial RoPE (x
    angles, then y)."""
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
    """The class/token head in float64: raw latents [N, B, h, w] -> (class [N, D], spatial [N, h*w,
    D])."""
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


@pytest.mark.values
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
    for actual, expected in [
        (alignment.class_token, class_token),
        (alignment.spatial_tokens, spatial),
    ]:
        assert actual.dtype == torch.float32
        torch.testing.assert_close(actual.double(), expected, rtol=0, atol=FLOAT32_GOLDEN_TOLERANCE)


if __name__ == "__main__":
    for name in FAMILY.tiny_configs():
        print(f'"{name}": {golden_values(golden_outputs(name, float64=True), INDICES)},')
