"""Taming-style VQGAN encoder and decoder (Esser et al., 2021), readable top to bottom.

Encoder: conv_in -> per level [res blocks (+ attention at attn_resolutions)] -> downsample
-> middle (res, attn, res) -> norm, swish, conv_out to z_channels. The decoder mirrors it.
The downsampling factor is 2 ** (len(ch_mult) - 1): the paper config, ch_mult
[1, 1, 2, 2, 4] at 256 px, gives f16 and a 16x16 token grid.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, channels), num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():  # inference: the same products, one tensor fewer to allocate
        return torch.sigmoid(x).mul_(x)
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.skip(x) + h


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(c)) v written out, as taming-transformers does: the baseline of
    model.attention=sdpa (torch's fused kernels, the same function)."""
    weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    return weights @ v


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over the H*W positions."""

    def __init__(self, channels: int, attention: str = "sdpa"):
        super().__init__()
        self.norm = normalize(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        attend = F.scaled_dot_product_attention if self.attention == "sdpa" else math_attention
        out = attend(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming's asymmetric padding


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _stage(in_ch: int, out_ch: int, blocks: int, attn: bool, dropout: float, attention: str) -> nn.ModuleList:
    layers = []
    for _ in range(blocks):
        layers.append(ResnetBlock(in_ch, out_ch, dropout))
        in_ch = out_ch
        if attn:
            layers.append(AttnBlock(out_ch, attention))
    return nn.ModuleList(layers)


class Middle(nn.Module):
    def __init__(self, channels: int, dropout: float, attention: str = "sdpa"):
        super().__init__()
        self.block1 = ResnetBlock(channels, channels, dropout)
        self.attn = AttnBlock(channels, attention)
        self.block2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.attn(self.block1(x)))


class Checkpointed(nn.Module):
    """Runs its blocks one after another; with `checkpointing` on (and gradients wanted),
    each block's activations are recomputed in backward instead of kept: the memory of a
    large batch for ~one more forward (trainer.activation_checkpointing)."""

    checkpointing = False

    def run(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, h, use_reentrant=False)
        return layer(h)


class Encoder(Checkpointed):
    def __init__(self, *, in_channels: int, ch: int, ch_mult: list[int], num_res_blocks: int,
                 attn_resolutions: list[int], z_channels: int, resolution: int, dropout: float = 0.0,
                 attention: str = "sdpa"):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        in_ch, res = ch, resolution
        for level, mult in enumerate(ch_mult):
            out_ch = ch * mult
            self.stages.append(_stage(in_ch, out_ch, num_res_blocks, res in attn_resolutions, dropout, attention))
            in_ch = out_ch
            last = level == len(ch_mult) - 1
            self.downs.append(nn.Identity() if last else Downsample(out_ch))
            res = res if last else res // 2
        self.mid = Middle(in_ch, dropout, attention)
        self.norm_out = normalize(in_ch)
        self.conv_out = nn.Conv2d(in_ch, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage, down in zip(self.stages, self.downs):
            for layer in stage:
                h = self.run(layer, h)
            h = down(h)
        return self.conv_out(swish(self.norm_out(self.run(self.mid, h))))


class Decoder(Checkpointed):
    def __init__(self, *, out_channels: int, ch: int, ch_mult: list[int], num_res_blocks: int,
                 attn_resolutions: list[int], z_channels: int, resolution: int, dropout: float = 0.0,
                 attention: str = "sdpa"):
        super().__init__()
        in_ch = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, in_ch, 3, padding=1)
        self.mid = Middle(in_ch, dropout, attention)
        self.stages = nn.ModuleList()
        self.ups = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            out_ch = ch * ch_mult[level]
            # The decoder has one more res block per level than the encoder, as in taming.
            self.stages.append(_stage(in_ch, out_ch, num_res_blocks + 1, res in attn_resolutions, dropout, attention))
            in_ch = out_ch
            self.ups.append(Upsample(out_ch) if level > 0 else nn.Identity())
            res = res * 2 if level > 0 else res
        self.norm_out = normalize(in_ch)
        self.conv_out = nn.Conv2d(in_ch, out_channels, 3, padding=1)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Everything before `conv_out`: its input, which the adaptive GAN weight needs."""
        h = self.run(self.mid, self.conv_in(z))
        for stage, up in zip(self.stages, self.ups):
            for layer in stage:
                h = self.run(layer, h)
            h = up(h)
        return swish(self.norm_out(h))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.features(z))
