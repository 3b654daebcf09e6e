"""XResNet (fastai-semantics §4): parameter counts, initialisation, ResNet-D shortcuts, shapes, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sota_ablate.models import count_parameters, create_model, model_names
from sota_ablate.models.xresnet import ConvLayer, ResBlock, XResNet
from sota_ablate.registry import UnknownNameError

LAYERS = {"xresnet18": (1, [2, 2, 2, 2]), "xresnet34": (1, [3, 4, 6, 3]), "xresnet50": (4, [3, 4, 6, 3])}


def expected_params(expansion: int, layers: list[int], n_out: int, c_in: int = 3) -> int:
    """Independent count from the architecture's arithmetic (conv k·k·ni·nf, BN 2·nf, Linear (ni+1)·nf).

    Worked values: the stem is 3·32·9 + 32·32·9 + 32·64·9 = 28,512 conv + 2·(32+32+64) = 256 BN = 28,768,
    i.e. 19,232 more than torchvision's 7x7 stem (9,408 + 128). The ResNet-D shortcut (pool + 1x1 conv + BN)
    has the same parameters as torchvision's strided 1x1 downsample, so xresnetN = torchvision resnetN +
    19,232: resnet18 11,689,512 → 11,708,744; resnet34 21,797,672 → 21,816,904; resnet50 25,557,032 →
    25,576,264 (n_out=1000). For n_out=10 subtract (f+1)·990 with f = 512·expansion features:
    507,870 (18/34) → 11,200,874 and 21,309,034; 2,028,510 (50) → 23,547,754.
    """

    def conv_bn(ni: int, nf: int, ks: int) -> int:
        return ks * ks * ni * nf + 2 * nf

    total = conv_bn(c_in, 32, 3) + conv_bn(32, 32, 3) + conv_bn(32, 64, 3)
    widths = [64 // expansion, 64, 128, 256, 512]
    for i, n_blocks in enumerate(layers):
        for j in range(n_blocks):
            ni = (widths[i] if j == 0 else widths[i + 1]) * expansion
            nh, nf = widths[i + 1], widths[i + 1] * expansion
            if expansion == 1:
                total += conv_bn(ni, nh, 3) + conv_bn(nh, nf, 3)
            else:
                total += conv_bn(ni, nh, 1) + conv_bn(nh, nh, 3) + conv_bn(nh, nf, 1)
            if ni != nf:
                total += conv_bn(ni, nf, 1)
    return total + (512 * expansion + 1) * n_out


@pytest.fixture(scope="module")
def r50() -> XResNet:
    torch.manual_seed(0)
    return create_model("xresnet50", n_out=10)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("name", "n_out", "count"),
    [
        ("xresnet18", 10, 11_200_874),
        ("xresnet18", 1000, 11_708_744),
        ("xresnet34", 10, 21_309_034),
        ("xresnet34", 1000, 21_816_904),
        ("xresnet50", 10, 23_547_754),
        ("xresnet50", 1000, 25_576_264),
    ],
)
def test_parameter_counts(name: str, n_out: int, count: int) -> None:
    expansion, layers = LAYERS[name]
    assert expected_params(expansion, layers, n_out) == count
    assert count_parameters(create_model(name, n_out=n_out)) == count


def test_counts_match_torchvision_plus_stem() -> None:
    torchvision = pytest.importorskip("torchvision")
    stem_extra = (3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 2 * 128) - (7 * 7 * 3 * 64 + 2 * 64)
    assert stem_extra == 19_232
    tv = count_parameters(torchvision.models.resnet50(num_classes=10))
    assert tv + stem_extra == 23_547_754


def test_count_parameters_trainable_only() -> None:
    model = create_model("xresnet18", n_out=10)
    for p in model.fc.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == 11_200_874 - (512 + 1) * 10


def test_zero_gamma_on_last_bn_of_each_block(r50: XResNet) -> None:
    blocks = [m for m in r50.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 16
    for block in blocks:
        convs = [m for m in block.convpath if isinstance(m, ConvLayer)]
        assert len(convs) == 3
        assert torch.all(convs[-1].bn.weight == 0)
        assert not hasattr(convs[-1], "act")
        for conv in convs[:-1]:
            assert torch.all(conv.bn.weight == 1)
        if isinstance(block.idpath, nn.Sequential):
            assert torch.all(block.idpath.conv.bn.weight == 1)
    n_zero = sum(int(torch.all(m.weight == 0)) for m in r50.modules() if isinstance(m, nn.BatchNorm2d))
    assert n_zero == 16
    basic = create_model("xresnet18")
    for block in (m for m in basic.modules() if isinstance(m, ResBlock)):
        assert len(block.convpath) == 2
        assert torch.all(block.convpath.conv2.bn.weight == 0)
        assert torch.all(block.convpath.conv1.bn.weight == 1)


def test_all_biases_zero(r50: XResNet) -> None:
    n = 0
    for m in r50.modules():
        if getattr(m, "bias", None) is not None:
            assert torch.all(m.bias == 0), m
            n += 1
    assert n == sum(isinstance(m, nn.BatchNorm2d) for m in r50.modules()) + 1  # BN β + the Linear bias
    for m in r50.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is None


def test_kaiming_normal_std(r50: XResNet) -> None:
    conv = r50.stage4.block1.convpath.conv2.conv  # 3x3, 512 → 512: 2.36 M weights
    fan_in = 512 * 3 * 3
    std = math.sqrt(2 / fan_in)  # kaiming_normal_, fan_in, gain √2
    w = conv.weight.detach()
    assert w.std().item() == pytest.approx(std, rel=0.01)
    assert abs(w.mean().item()) < 0.01 * std  # the mean's own std is std / 1536
    fc = r50.fc.weight.detach()
    assert fc.std().item() == pytest.approx(math.sqrt(2 / 2048), rel=0.05)


def test_resnet_d_shortcuts(r50: XResNet) -> None:
    stages = [r50.stage1, r50.stage2, r50.stage3, r50.stage4]
    first = stages[0].block0
    assert isinstance(first.idpath, nn.Sequential)  # 64 → 256 channels, stride 1: conv only, no pool
    assert not any(isinstance(m, nn.AvgPool2d) for m in first.idpath.modules())
    for stage in stages[1:]:
        idpath = stage.block0.idpath
        assert isinstance(idpath, nn.Sequential)
        assert isinstance(idpath[0], nn.AvgPool2d)
        assert idpath[0].kernel_size == 2 and idpath[0].stride == 2 and idpath[0].ceil_mode
        assert isinstance(idpath[1], ConvLayer) and idpath[1].conv.kernel_size == (1, 1)
        assert idpath[1].conv.stride == (1, 1)
        assert stage.block0.convpath.conv2.conv.stride == (2, 2)  # ResNet-B: stride on the 3x3
        assert stage.block0.convpath.conv1.conv.stride == (1, 1)
    for stage in stages:
        for block in list(stage)[1:]:
            assert isinstance(block.idpath, nn.Identity)


def test_stem_and_head(r50: XResNet) -> None:
    names = [name for name, _ in r50.named_children()]
    assert names == [
        "conv1", "conv2", "conv3", "maxpool", "stage1", "stage2", "stage3", "stage4",
        "pool", "flatten", "dropout", "fc",
    ]  # fmt: skip
    assert [r50.conv1.conv.stride, r50.conv2.conv.stride, r50.conv3.conv.stride] == [(2, 2), (1, 1), (1, 1)]
    assert [r50.conv1.conv.out_channels, r50.conv2.conv.out_channels, r50.conv3.conv.out_channels] == [
        32,
        32,
        64,
    ]
    assert r50.fc.in_features == 2048 and r50.fc.out_features == 10
    assert create_model("xresnet18").fc.in_features == 512


@pytest.mark.parametrize("size", [64, 128])
def test_forward_shapes(r50: XResNet, size: int) -> None:
    r50.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = r50[:8](x)
        out = r50(x)
        out_cl = r50.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    r50.to(memory_format=torch.contiguous_format)
    assert feats.shape == (2, 2048, size // 32, size // 32)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-4)


def test_create_model_kwargs() -> None:
    m = create_model("xresnet18", n_out=7, p=None, c_in=1)
    assert m.conv1.conv.in_channels == 1 and m.fc.out_features == 7
    assert m.dropout.p == 0.0
    assert create_model("xresnet18", p=0.5).dropout.p == 0.5


def test_unknown_model_lists_known() -> None:
    assert {"xresnet18", "xresnet34", "xresnet50"} <= set(model_names())
    with pytest.raises(UnknownNameError) as err:
        create_model("xresnet51")
    msg = str(err.value)
    assert "xresnet18" in msg and "xresnet34" in msg and "xresnet50" in msg
    with pytest.raises(KeyError):
        create_model("resnet")
