"""The ViT tower's export form: the same function as the torch tower, matrix products instead
of ``nn.MultiheadAttention`` and the patch convolution, the torch tower left unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.encoders.open_clip_encoder import OpenClipEncoder, resolve_weights
from pipeline.encoders.vit_graph import MatMulAttention, PatchMatMul, export_form
from pipeline.settings import VitrineSettings


@pytest.fixture(scope="module")
def tower(tiny_checkpoint) -> nn.Module:
    settings = VitrineSettings(model_arch="vitrine-tiny-vit", model_pretrained=str(tiny_checkpoint))
    encoder = OpenClipEncoder(
        "vitrine-tiny-vit", resolve_weights(settings), device="cpu", batch_size=8
    )
    return encoder.model.visual.eval()


def test_the_export_form_computes_what_the_tower_does(tower):
    lean = export_form(tower)
    pixels = torch.randn(5, 3, *tower.image_size)
    with torch.inference_mode():
        torch.testing.assert_close(lean(pixels), tower(pixels), atol=1e-5, rtol=1e-5)


def test_the_export_form_replaces_attention_and_patch_embedding_only_in_its_copy(tower):
    lean = export_form(tower)
    assert isinstance(lean.conv1, PatchMatMul) and isinstance(tower.conv1, nn.Conv2d)
    replaced = [m for m in lean.modules() if isinstance(m, MatMulAttention)]
    assert len(replaced) == len(tower.transformer.resblocks) > 0
    assert not any(isinstance(m, MatMulAttention) for m in tower.modules())
    assert lean.conv1.conv.weight is tower.conv1.weight  # shared, not copied


def test_a_patch_convolution_with_a_bias_gives_the_convolutions_output():
    conv = nn.Conv2d(3, 8, kernel_size=4, stride=4, bias=True)
    pixels = torch.randn(2, 3, 12, 16)
    with torch.inference_mode():
        torch.testing.assert_close(PatchMatMul(conv, (3, 4))(pixels), conv(pixels))


def test_attention_with_a_mask_or_cross_attention_is_refused():
    attention = MatMulAttention(nn.MultiheadAttention(8, 2, batch_first=True))
    x, other = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match="without a mask"):
        attention(x, x, x, attn_mask=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="without a mask"):
        attention(x, other, other)


def test_other_towers_are_exported_as_they_are():
    convnet = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert export_form(convnet) is convnet
