"""Models: the paper's architectures and the small analogues the embedded presets train.

* :class:`CifarResNet`: He et al.'s CIFAR ResNet with option-A (parameter-free) shortcuts;
  depth 20, width 16 is ResNet-20 (269,722 parameters, 1,376 of them BatchNorm); small
  widths and depths on 8×8 digits are the notebooks' analogues (02, 07).
* :class:`VGG`: VGG-style conv stacks with optional BatchNorm (VGG-16 for CIFAR-10; tiny on digits, 03).
* :class:`SmallCNN`: the BatchNorm CNN of notebooks 01 and 09. :class:`MLP`: width sweeps.
  :func:`set_bn_scale`: notebook 09's dead initialisation (every BatchNorm scale at 0).
* :class:`TinyViT`: a pre-norm Vision Transformer on patches of 8×8 digits (notebook 09's
  analogue); :func:`vit_b_16`: torchvision's ViT-B/16 for the ImageNet paper preset.
* :func:`tiny_gpt_neox`: a GPT-NeoX built from ``transformers.GPTNeoXConfig`` with Pythia's
  parameter names (04, 05). :func:`resnet50`: torchvision's, for the ImageNet paper preset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..record import batchnorm_parameters


class SmallCNN(nn.Module):
    """Three 3×3 conv layers with BatchNorm, global average pooling, a linear head. Input (N, C, H, W)."""

    def __init__(self, width: int = 16, *, in_channels: int = 1, num_classes: int = 10, bn: bool = True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=not bn), norm(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=not bn), norm(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=not bn), norm(4 * w), nn.ReLU(),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def set_bn_scale(model: nn.Module, value: float) -> nn.Module:
    """Set every BatchNorm scale γ to ``value``; returns ``model``. At 0, a BatchNorm followed by
    ReLU outputs 0 and passes no gradient, so nothing before the last BatchNorm and none of the
    head's weights can learn: a *dead* initialisation (notebook 09). A model without BatchNorm
    is an error."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no BatchNorm scale to set")
    with torch.no_grad():
        for m in norms:
            m.weight.fill_(value)
    return model


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN x), then x + MLP(LN x). (N, L, D) → (N, L, D)."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A Vision Transformer (Dosovitskiy et al. 2021) small enough for 8×8 digits: non-overlapping
    ``patch``×``patch`` patches embedded linearly, a class token, learned positions, ``depth``
    pre-norm blocks, a linear head on the final LayerNorm of the class token.
    Input (N, C, H, W) with H, W divisible by ``patch``; on digits, 4 tokens of 4×4 pixels (2×2
    patches train far more slowly under SGD in a few epochs: 30–35 % against 90 % at 6 epochs)."""

    def __init__(self, *, image_size: int = 8, patch: int = 4, dim: int = 32, depth: int = 2, heads: int = 4,
                 mlp: int = 64, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        if image_size % patch or dim % heads:
            raise ValueError(f"image_size={image_size} must be divisible by patch={patch}, "
                             f"and dim={dim} by heads={heads}")
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)  # a linear map of each patch
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image_size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)                # (N, L, D), L = (H/p)(W/p)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos  # (N, L+1, D)
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit_b_16(*, num_classes: int = 1000) -> nn.Module:
    """torchvision's ViT-B/16, randomly initialised (notebook 09's paper preset; not run here)."""
    import torchvision

    return torchvision.models.vit_b_16(weights=None, num_classes=num_classes)


class _ShortcutA(nn.Module):
    """Option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra: int):
        super().__init__()
        self.extra = extra

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _ShortcutA(cout - cin) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, §4.2): 3 stages of ``blocks`` basic blocks at widths
    w, 2w, 4w. ``depth = 6·blocks + 2``; ResNet-20 is ``CifarResNet(blocks=3, width=16)``."""

    def __init__(self, *, blocks: int = 3, width: int = 16, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            stage_blocks = []
            for b in range(blocks):
                stage_blocks.append(_BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
            layers.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean(dim=(2, 3)))


def resnet20(*, num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for CIFAR-10 (notebook 07's paper preset)."""
    return CifarResNet(blocks=3, width=16, in_channels=3, num_classes=num_classes)


VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG-style: ``cfg`` lists conv widths and "M" (2×2 max-pool); then global pooling and a
    linear head. ``VGG(VGG16, in_channels=3)`` is VGG-16 for CIFAR-10 (notebook 03)."""

    def __init__(self, cfg=(16, "M", 32, "M", 64, "M"), *, in_channels: int = 1, num_classes: int = 10,
                 bn: bool = True):
        super().__init__()
        layers, cin = [], in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=not bn)]
                layers += [nn.BatchNorm2d(v), nn.ReLU()] if bn else [nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def vgg16(*, in_channels: int = 3, num_classes: int = 10, bn: bool = True) -> VGG:
    """VGG-16 for 32×32 inputs (notebook 03's paper preset)."""
    return VGG(VGG16, in_channels=in_channels, num_classes=num_classes, bn=bn)


MLP_INITS = ("torch", "he", "glorot")
PARAMETRISATIONS = ("standard", "mup")


class MLP(nn.Module):
    """``depth`` hidden ReLU layers of ``width`` units on flattened inputs.

    ``init``: "torch" (PyTorch's default for ``nn.Linear``), "he" (Kaiming normal, fan-in, ReLU
    gain) or "glorot" (Xavier normal); biases start at 0 under the latter two.
    ``parametrisation``: "standard", or "mup", the maximal-update parametrisation for SGD
    (Yang & Hu 2021; Yang et al. 2022, Table 3) relative to ``base_width``: the output weights
    start √(base_width / width) times smaller, and :meth:`lr_multipliers` scales the learning
    rate of the input layer and of every bias by width / base_width and of the output weights by
    base_width / width (hidden weights 1). At ``width == base_width`` both parametrisations
    coincide.
    """

    def __init__(self, width: int = 64, *, depth: int = 2, in_features: int = 64, num_classes: int = 10,
                 init: str = "torch", parametrisation: str = "standard", base_width: int | None = None):
        super().__init__()
        if init not in MLP_INITS:
            raise ValueError(f"init={init!r}; valid: {', '.join(MLP_INITS)}")
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"parametrisation={parametrisation!r}; valid: {', '.join(PARAMETRISATIONS)}")
        if parametrisation == "mup" and not base_width:
            raise ValueError("parametrisation='mup' needs base_width (the width at which it equals 'standard')")
        dims = [in_features] + [width] * depth
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(nn.Flatten(), *layers, nn.Linear(dims[-1], num_classes))
        self.linears = [m for m in self.net if isinstance(m, nn.Linear)]
        if init != "torch":
            with torch.no_grad():
                for m in self.linears:
                    if init == "he":
                        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    else:
                        nn.init.xavier_normal_(m.weight)
                    m.bias.zero_()
        self.width, self.parametrisation, self.base_width = width, parametrisation, base_width
        if parametrisation == "mup":
            with torch.no_grad():
                self.linears[-1].weight.mul_((base_width / width) ** 0.5)

    def lr_multipliers(self) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, learning-rate multiplier) groups covering every parameter; all 1 under
        the standard parametrisation."""
        if self.parametrisation == "standard":
            return [(list(self.parameters()), 1.0)]
        r = self.width / self.base_width
        first, *hidden, last = self.linears
        return [([first.weight, first.bias, *(m.bias for m in hidden)], r), ([m.weight for m in hidden], 1.0),
                ([last.weight], 1 / r), ([last.bias], 1.0)]

    def forward(self, x):
        return self.net(x)


def resnet50(*, num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-50, randomly initialised (notebook 02's paper preset)."""
    import torchvision

    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


def tiny_gpt_neox(*, vocab_size: int, width: int = 64, layers: int = 4, heads: int = 4, context: int = 64,
                  seed: int = 0) -> nn.Module:
    """A GPT-NeoX language model with Pythia's layout and parameter names
    (``gpt_neox.layers.<i>.attention.query_key_value.weight`` fused and interleaved per head).
    ``width`` must be divisible by ``heads``. Its config dict is ``model.config.to_dict()``."""
    import warnings

    with warnings.catch_warnings():  # tqdm.auto warns in notebooks without ipywidgets
        warnings.filterwarnings("ignore", message="IProgress not found")
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    if width % heads:
        raise ValueError(f"width={width} is not divisible by heads={heads}")
    config = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * width, max_position_embeddings=context, rotary_pct=0.25,
        use_parallel_residual=True, tie_word_embeddings=False, hidden_dropout=0.0, attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the caller's RNG is untouched
        torch.manual_seed(seed)
        return GPTNeoXForCausalLM(config)


def count_parameters(model: nn.Module, *, bn_only: bool = False) -> int:
    """Trainable-parameter count (tied counted once); ``bn_only`` counts BatchNorm scales and shifts."""
    if bn_only:
        return sum(p.numel() for p in batchnorm_parameters(model).values())
    return sum(p.numel() for p in model.parameters())
