"""Our attention modules: FP parity with timm (fused and plain paths), hook semantics and shapes, swap rules."""

from pathlib import Path

import pytest
import timm
import torch
from conftest import CONF_DIR
from omegaconf import OmegaConf
from timm.models.swin_transformer import WindowAttention
from timm.models.vision_transformer import Attention

from mimiq.models import create_model
from mimiq.models.attention import SwinWindowAttention, ViTAttention, attention_modules, swap_attention

PAPER = [f"{a}_{s}_patch16_224" for a in ("vit", "deit") for s in ("tiny", "small", "base")]
PAPER += [f"swin_{s}_patch4_window7_224" for s in ("tiny", "small", "base")]
MINI = ["vit_mini", "swin_mini", "vit_test", "swin_test"]
# The default (fast) run checks every distinct attention geometry of PAPER (width, heads, head dim, window, shift,
# 224 px) with fewer blocks: Swin keeps two blocks per stage but the last (7x7 tokens = one window, never
# shifted). deit_* = vit_* and swin_small = swin_tiny per block, so they are covered; `-m slow` runs all nine
# at full depth (~3 min on 2 CPU cores).
SHALLOW = {"vit": {"depth": 2}, "swin": {"depths": [2, 2, 2, 1]}}
GEOMETRIES = [
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "swin_tiny_patch4_window7_224",
    "swin_base_patch4_window7_224",
]


def build(name: str, shallow: bool = False) -> torch.nn.Module:
    cfg = OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")
    cfg.pretrained = False
    if shallow:
        cfg.arch = SHALLOW[cfg.family]
    torch.manual_seed(0)
    return create_model(cfg)


def check_parity(model: torch.nn.Module, both_paths: bool) -> None:
    """Our modules vs timm's on one image, atol 1e-5: vs the path timm picked at construction (SDPA for ViT,
    plain for Swin), and with `both_paths` vs the fused (SDPA) and the plain path."""
    x = torch.randn(1, 3, *model.patch_embed.img_size)
    timm_attn = [m for m in model.modules() if isinstance(m, Attention | WindowAttention)]
    refs = []
    with torch.no_grad():
        for fused in (True, False) if both_paths else (timm_attn[0].fused_attn,):
            for m in timm_attn:
                m.fused_attn = fused
            refs.append(model(x))
        assert swap_attention(model) == len(timm_attn) > 0
        ours = model(x)
    assert not any(isinstance(m, Attention | WindowAttention) for m in model.modules())
    for ref in refs:
        assert ref.abs().max() > 0.1  # a meaningful comparison
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", GEOMETRIES + MINI)
def test_fp_parity_with_timm(name):
    check_parity(build(name, shallow=name in PAPER), both_paths=name in MINI)


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_fp_parity_with_timm_full_depth(name):
    check_parity(build(name), both_paths=True)


def _capture(modules):
    """Forward hooks: {module: (inputs, output)} of the last call."""
    seen, hooks = {}, []
    for m in modules:
        hooks.append(m.register_forward_hook(lambda mod, i, o: seen.__setitem__(mod, (i, o))))
    return seen, hooks


def test_vit_hooks_see_pre_scale_logits_probs_and_per_head_output():
    model = build("vit_test")
    swap_attention(model)
    attn = model.blocks[0].attn
    seen, _ = _capture([attn.qkv, attn.matmul_qk, attn.softmax, attn.matmul_av, attn.proj])
    B, N, H, d = 2, 17, attn.num_heads, attn.head_dim  # 32 px / patch 8 -> 16 patches + CLS
    with torch.no_grad():
        model(torch.randn(B, 3, 32, 32))
    q, k, v = seen[attn.qkv][1].reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    logits = seen[attn.matmul_qk][1]
    assert logits.shape == (B, H, N, N)
    torch.testing.assert_close(logits, q @ k.transpose(-2, -1))  # Q K^T before x scale and softmax
    probs = seen[attn.softmax][1]
    torch.testing.assert_close(probs, (logits * attn.scale).softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, H, N))
    out = seen[attn.matmul_av][1]
    assert out.shape == (B, H, N, d)  # per head, before the heads are merged
    torch.testing.assert_close(out, probs @ v)
    torch.testing.assert_close(seen[attn.proj][0][0], out.transpose(1, 2).reshape(B, N, H * d))


def test_swin_hooks_see_prescaled_q_before_bias_and_mask():
    model = build("swin_test")
    swap_attention(model)
    block = model.layers[0].blocks[1]  # 8x8 tokens, window 4, shift 2: masked
    attn = block.attn
    assert any(block.shift_size) and block.attn_mask is not None
    seen, _ = _capture([attn.qkv, attn.matmul_qk, attn.softmax, attn.matmul_av])
    B, nW, N, H = 2, 4, 16, attn.num_heads
    with torch.no_grad():
        model(torch.randn(B, 3, 32, 32))
    q, k, v = seen[attn.qkv][1].reshape(B * nW, N, 3, H, -1).permute(2, 0, 3, 1, 4)
    logits = seen[attn.matmul_qk][1]
    assert logits.shape == (B * nW, H, N, N)
    torch.testing.assert_close(logits, (q * attn.scale) @ k.transpose(-2, -1))  # timm/paper code: q pre-scaled
    mask = block.attn_mask.unsqueeze(1).repeat(B, 1, 1, 1)  # (B*nW, 1, N, N), window index fastest
    expect = (logits + attn.rel_pos_bias() + mask).softmax(-1)
    torch.testing.assert_close(seen[attn.softmax][1], expect)
    assert seen[attn.matmul_av][1].shape == (B * nW, H, N, q.shape[-1])


def test_swap_keeps_state_dict_and_is_idempotent():
    model = build("swin_test")
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    fused_default = timm.layers.use_fused_attn()
    assert swap_attention(model) == 4
    assert list(model.state_dict()) == list(ref)  # same keys, same order: FP checkpoints load strictly
    model.load_state_dict(ref, strict=True)
    assert swap_attention(model) == 0
    assert [type(m) for _, m in attention_modules(model)] == [SwinWindowAttention] * 4
    assert timm.layers.use_fused_attn() == fused_default  # fused attention is off only inside our modules
    vit = build("vit_test")
    qkv = vit.blocks[1].attn.qkv
    swap_attention(vit)
    assert isinstance(vit.blocks[1].attn, ViTAttention) and vit.blocks[1].attn.qkv is qkv  # shared, not copied
    assert [n for n, _ in attention_modules(vit)] == ["blocks.0.attn", "blocks.1.attn"]
