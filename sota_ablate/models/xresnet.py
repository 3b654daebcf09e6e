"""fastai's XResNet: ResNet with the "Bag of Tricks" tweaks (He et al., 2019, arXiv:1812.01187).

A pure-PyTorch rebuild of fastai's ``XResNet`` (``fastai2/vision/models/xresnet.py`` and ``ConvLayer`` /
``ResBlock`` / ``init_cnn`` in ``fastai2/layers.py``), as described in fastai-semantics §4:

- ResNet-C stem: three 3x3 ConvLayers (c_in→32 stride 2, 32→32, 32→64), then ``MaxPool2d(3, 2, 1)``;
- ResNet-B: the bottleneck's stride sits on its 3x3 conv, not the first 1x1;
- ResNet-D: a strided shortcut average-pools (``AvgPool2d(2, ceil_mode=True)``) before its 1x1 conv;
- zero-γ: the last BatchNorm of every residual branch starts at γ = 0, so each block starts as the identity;
- ``init_cnn``: every bias (BN β included) 0, ``kaiming_normal_`` (fan_in, ReLU gain) on Conv2d/Linear weights.

The model is a flat ``nn.Sequential`` in fastai's order (stem, stages, head), with readable child names.
Flattening uses ``torch.flatten`` (no ``.view``), so it runs in ``channels_last`` memory format.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from sota_ablate.models import MODELS

STEM_SIZES: tuple[int, int, int] = (32, 32, 64)
STAGE_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)


class ConvLayer(nn.Sequential):
    """fastai's ``ConvLayer``: Conv2d (no bias) → BatchNorm2d → optional ReLU.

    Args:
        ni: input channels.
        nf: output channels.
        ks: kernel size (padding ``(ks - 1) // 2``).
        stride: convolution stride.
        act: whether to end with an in-place ReLU.
        zero_bn: initialise the BatchNorm's γ to 0 (fastai's ``NormType.BatchZero``).
    """

    def __init__(self, ni: int, nf: int, ks: int = 3, stride: int = 1, act: bool = True, zero_bn: bool = False) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(ni, nf, ks, stride=stride, padding=(ks - 1) // 2, bias=False),
            bn=nn.BatchNorm2d(nf),
        )
        if act:
            layers["act"] = nn.ReLU(inplace=True)
        super().__init__(layers)
        self.zero_bn = zero_bn
        nn.init.constant_(self.bn.weight, 0.0 if zero_bn else 1.0)


class ResBlock(nn.Module):
    """fastai's ``ResBlock`` (basic for expansion 1, bottleneck for expansion 4), ReLU after the add.

    Args:
        expansion: 1 (two 3x3 convs) or 4 (1x1 → 3x3 → 1x1 bottleneck).
        ni: input width before expansion (the block sees ``ni * expansion`` channels).
        nf: block width before expansion (the block outputs ``nf * expansion`` channels).
        stride: stride of the block (on the first 3x3 conv of the branch, and on the shortcut's pool).
    """

    def __init__(self, expansion: int, ni: int, nf: int, stride: int = 1) -> None:
        super().__init__()
        nh = nf
        ni, nf = ni * expansion, nf * expansion
        if expansion == 1:
            convpath = OrderedDict(
                conv1=ConvLayer(ni, nh, 3, stride=stride),
                conv2=ConvLayer(nh, nf, 3, act=False, zero_bn=True),
            )
        else:
            convpath = OrderedDict(
                conv1=ConvLayer(ni, nh, 1),
                conv2=ConvLayer(nh, nh, 3, stride=stride),
                conv3=ConvLayer(nh, nf, 1, act=False, zero_bn=True),
            )
        self.convpath = nn.Sequential(convpath)
        idpath: OrderedDict[str, nn.Module] = OrderedDict()
        if stride != 1:
            idpath["pool"] = nn.AvgPool2d(stride, ceil_mode=True)
        if ni != nf:
            idpath["conv"] = ConvLayer(ni, nf, 1, act=False)
        self.idpath = nn.Sequential(idpath) if idpath else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """``relu(convpath(x) + idpath(x))``."""
        return self.act(self.convpath(x) + self.idpath(x))


def init_cnn(module: nn.Module) -> None:
    """fastai's ``init_cnn``: zero every bias (BN β too), ``kaiming_normal_`` on Conv2d/Linear weights.

    BatchNorm γ is left as constructed (1, or 0 for the zero-γ BN closing each residual branch).

    Args:
        module: the model; every submodule is visited (pre-order, as fastai's recursion does).
    """
    for m in module.modules():
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, a=0.0, mode="fan_in", nonlinearity="relu")


class XResNet(nn.Sequential):
    """fastai's ``XResNet`` as a flat ``nn.Sequential``.

    Children, in order: ``conv1``, ``conv2``, ``conv3``, ``maxpool`` (stem); ``stage1`` … ``stage4``
    (``nn.Sequential`` of :class:`ResBlock`, named ``block0`` …); ``pool``, ``flatten``, ``dropout``, ``fc``
    (head).

    Args:
        expansion: 1 for xresnet18/34, 4 for xresnet50.
        layers: number of blocks per stage.
        n_out: number of output logits.
        p: dropout probability before the final Linear.
        c_in: input channels.
    """

    def __init__(self, expansion: int, layers: list[int], n_out: int = 1000, p: float = 0.0, c_in: int = 3) -> None:
        if len(layers) != len(STAGE_WIDTHS):
            raise ValueError(f"XResNet needs {len(STAGE_WIDTHS)} stages, got layers={layers}")
        self.expansion = expansion
        sizes = (c_in, *STEM_SIZES)
        children: OrderedDict[str, nn.Module] = OrderedDict(
            (f"conv{i + 1}", ConvLayer(sizes[i], sizes[i + 1], 3, stride=2 if i == 0 else 1)) for i in range(3)
        )
        children["maxpool"] = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (STEM_SIZES[-1] // expansion, *STAGE_WIDTHS)
        for i, n_blocks in enumerate(layers):
            stride = 1 if i == 0 else 2
            children[f"stage{i + 1}"] = nn.Sequential(
                OrderedDict(
                    (
                        f"block{j}",
                        ResBlock(
                            expansion, widths[i] if j == 0 else widths[i + 1], widths[i + 1], stride if j == 0 else 1
                        ),
                    )
                    for j in range(n_blocks)
                )
            )
        children["pool"] = nn.AdaptiveAvgPool2d(1)
        children["flatten"] = nn.Flatten()
        children["dropout"] = nn.Dropout(p)
        children["fc"] = nn.Linear(widths[-1] * expansion, n_out)
        super().__init__(children)
        init_cnn(self)

    def __getitem__(self, idx: int | slice) -> nn.Module:
        """``model[i]`` is a child; ``model[a:b]`` a plain ``nn.Sequential`` of those children (the body)."""
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)


@MODELS.register("xresnet18")
def xresnet18(n_out: int = 10, p: float = 0.0, c_in: int = 3) -> XResNet:
    """XResNet-18: basic blocks, layers [2, 2, 2, 2].

    Args:
        n_out: number of output logits.
        p: dropout before the final Linear.
        c_in: input channels.
    """
    return XResNet(1, [2, 2, 2, 2], n_out=n_out, p=p, c_in=c_in)


@MODELS.register("xresnet34")
def xresnet34(n_out: int = 10, p: float = 0.0, c_in: int = 3) -> XResNet:
    """XResNet-34: basic blocks, layers [3, 4, 6, 3].

    Args:
        n_out: number of output logits.
        p: dropout before the final Linear.
        c_in: input channels.
    """
    return XResNet(1, [3, 4, 6, 3], n_out=n_out, p=p, c_in=c_in)


@MODELS.register("xresnet50")
def xresnet50(n_out: int = 10, p: float = 0.0, c_in: int = 3) -> XResNet:
    """XResNet-50: bottleneck blocks (expansion 4), layers [3, 4, 6, 3]; the chapter's model.

    Args:
        n_out: number of output logits (fastbook's executed notebook used 1000, the fixed one ``dls.c``).
        p: dropout before the final Linear.
        c_in: input channels.
    """
    return XResNet(4, [3, 4, 6, 3], n_out=n_out, p=p, c_in=c_in)
