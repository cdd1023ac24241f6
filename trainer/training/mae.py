"""A channel-agnostic masked autoencoder (MAE) ViT: the self-supervised model of docs/maps.md's row (e).

What OpenPhenom (Recursion's public Phenom model) does, at a size a CPU trains in minutes: every channel of every
patch is a token (`patch x patch` pixels of one channel through one shared projection, plus a 2-D sine-cosine
position embedding and a learnt channel embedding), so a token says what one stain shows in one place. Training
hides `mask_ratio` of the tokens, encodes the rest and reconstructs the hidden ones' pixels (MAE: He et al. 2021;
the loss on each patch normalised by its own mean and variance, MAE's `norm_pix_loss`). It never sees a label.

    model = create_model("mae_vit_tiny", num_classes=81, in_chans=6, num_cell_types=1)
    loss, feats = model.masked_reconstruction(x)       # the self-supervised step (train.stage=masked_autoencoding)
    emb = model.forward_features(x)                    # every token encoded, averaged per channel: (B, C * dim)

`forward_features` encodes every token of any image whose sides are a multiple of the patch (a site cut to the
nearest multiple otherwise): a 56 px crop is 7 x 7 patches x 6 channels = 294 tokens, a whole 128 px site 1,536.
The embedding averages each channel's tokens on their own and puts the channels side by side (6 x 128 = 768): a
token-mean over all channels would blend what each stain shows into one vector, and on the synthetic screen of
docs/maps.md that map recalled CORUM at 0.21 where the per-channel one recalls 0.71 (the same checkpoint).
The head (`ClassifierHead`) is a linear probe on those features; the masked-autoencoding stage trains it on
detached features (an online linear probe), so the main job can still name wells with it while the encoder learns
from pixels alone (trainer/training/stages/mae.py).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cellio.errors import ConfigError, MissingDependencyError

from .heads import ClassifierHead

__all__ = ["MaskedAutoencoderViT", "MAE_ARCHS", "MAE_TILE", "sincos_2d"]

# name -> (patch, encoder width, encoder depth, heads, decoder width, decoder depth)
MAE_ARCHS: dict[str, tuple[int, int, int, int, int, int]] = {
    "mae_vit_tiny": (8, 128, 4, 4, 64, 2),
}


# embeddings of images larger than MAE_TILE px a side are averaged over tiles of that size (a 128 px site is one
# tile: 1,536 tokens of 6 channels; a 512 px RxRx3-core site would be 24,576 tokens, whose attention a CPU cannot
# afford), encoding at most TILE_TOKENS_PER_PASS tokens at once (64 whole 128 px sites, what site_embeddings' batch
# of 64 costs)
MAE_TILE, TILE_TOKENS_PER_PASS = 128, 64 * 1536


def _starts(n: int, t: int) -> list[int]:
    """Offsets of ceil(n / t) windows of t covering 0..n evenly (the last ends at n)."""
    k = -(-n // t)
    return [round(i * (n - t) / (k - 1)) for i in range(k)] if k > 1 else [0]


def sincos_2d(h: int, w: int, dim: int, device: Any = None) -> torch.Tensor:
    """(h * w, dim) fixed 2-D sine-cosine position embedding (MAE's): half the width encodes the row, half the
    column, each as sin/cos at `dim // 4` frequencies. Computed for any grid, so a model trained on crops embeds
    whole sites without interpolating a learnt table."""
    if dim % 4:
        raise ConfigError(f"MAE width {dim}: must be a multiple of 4 for the 2-D sine-cosine position embedding")
    freq = 1.0 / 10000 ** (torch.arange(dim // 4, device=device, dtype=torch.float32) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    parts = [torch.outer(ys.flatten(), freq), torch.outer(xs.flatten(), freq)]
    return torch.cat([f(p) for p in parts for f in (torch.sin, torch.cos)], dim=1)


def _blocks(dim: int, depth: int, heads: int) -> nn.ModuleList:
    try:
        from timm.models.vision_transformer import Block
    except ImportError as e:  # timm is in the trainer's extra (setup.py)
        raise MissingDependencyError("the MAE model needs timm (pip install -e '.[trainer]')") from e
    return nn.ModuleList([Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])


class MaskedAutoencoderViT(nn.Module):
    """Channel-agnostic MAE ViT with a linear-probe `ClassifierHead` (the registry's model interface)."""

    def __init__(self, arch: str, *, num_classes: int, in_chans: int, num_cell_types: int,
                 mask_ratio: float = 0.75, tile: int | None = MAE_TILE, pretrained: Any = None, **head_kw: Any):
        super().__init__()
        if arch not in MAE_ARCHS:
            raise ConfigError(f"MAE arch {arch!r}: expected one of {list(MAE_ARCHS)}")
        if pretrained is not None:
            raise ConfigError(f"model {arch}: no pretrained weights exist for it (model.pretrained must be empty)")
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"model {arch}: mask_ratio {mask_ratio} must be in (0, 1)")
        patch, dim, depth, heads, ddim, ddepth = MAE_ARCHS[arch]
        if tile is not None and tile < patch:
            raise ConfigError(f"model {arch}: tile {tile} px is smaller than one {patch} px patch")
        self.arch, self.in_chans, self.patch, self.mask_ratio, self.tile = arch, in_chans, patch, mask_ratio, tile
        self._tiles = 1  # tiles per image of the forward_features pass under way
        self.width, self.num_features = dim, in_chans * dim
        self.embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)   # one projection for every channel
        self.channel_embed = nn.Parameter(torch.zeros(in_chans, dim))
        self.blocks = _blocks(dim, depth, heads)
        self.norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(ddim))
        self.decoder_channel_embed = nn.Parameter(torch.zeros(in_chans, ddim))
        self.decoder_blocks = _blocks(ddim, ddepth, heads)
        self.decoder_norm = nn.LayerNorm(ddim)
        self.decoder_pred = nn.Linear(ddim, patch * patch)
        self.head = ClassifierHead(self.num_features, num_classes, num_cell_types=num_cell_types, **head_kw)
        nn.init.normal_(self.channel_embed, std=0.02)
        nn.init.normal_(self.decoder_channel_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.blocks.modules(), *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------------------ tokens
    def _cut(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_chans:
            raise ConfigError(f"{self.arch}: expected {self.in_chans} input channels, found {x.shape[1]}")
        h, w = (x.shape[-2] // self.patch) * self.patch, (x.shape[-1] // self.patch) * self.patch
        if h == 0 or w == 0:
            raise ConfigError(f"{self.arch}: a {x.shape[-2]}x{x.shape[-1]} image is smaller than one "
                              f"{self.patch}x{self.patch} patch")
        return x[..., :h, :w]

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> (B, C * h * w, dim) embedded tokens (channel-major) and the patch grid (h, w)."""
        x = self._cut(x).float()
        b, c = x.shape[:2]
        t = self.embed(x.reshape(b * c, 1, *x.shape[-2:]))                 # (B*C, dim, h, w)
        grid = (t.shape[-2], t.shape[-1])
        t = t.flatten(2).transpose(1, 2).reshape(b, c, grid[0] * grid[1], -1)
        pos = sincos_2d(*grid, self.width, device=x.device)
        t = t + pos[None, None] + self.channel_embed[None, :, None]
        return t.reshape(b, c * grid[0] * grid[1], -1), grid

    def _encode(self, t: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)

    def patch_targets(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C * h * w, patch * patch) pixels of every token, each normalised by its own mean and variance."""
        x = self._cut(x).float()
        b, c, h, w = x.shape
        p = self.patch
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, -1, p * p)
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
        return (patches - mean) / (var + 1e-6).sqrt()

    # ------------------------------------------------------------------------------------------------ the objective
    def masked_reconstruction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MSE on the hidden tokens' normalised pixels, the visible tokens pooled per channel) for a batch: each
        image hides its own random `mask_ratio` of its tokens (torch's global RNG: seeded, and saved in every
        checkpoint, so a resumed run draws the same masks)."""
        t, grid = self.tokens(x)
        b, n, _ = t.shape
        keep = max(1, int(round(n * (1 - self.mask_ratio))))
        order = torch.rand(b, n, device=t.device).argsort(dim=1)
        visible = order[:, :keep]
        enc = self._encode(torch.gather(t, 1, visible[..., None].expand(-1, -1, t.shape[-1])))
        dec_visible = self.decoder_embed(enc)
        full = self.mask_token.to(dec_visible.dtype).expand(b, n, -1).clone()
        full.scatter_(1, visible[..., None].expand(-1, -1, full.shape[-1]), dec_visible)
        c = self.in_chans
        pos = sincos_2d(*grid, full.shape[-1], device=t.device)
        full = (full.reshape(b, c, grid[0] * grid[1], -1) + pos[None, None]
                + self.decoder_channel_embed[None, :, None]).reshape(b, n, -1)
        for blk in self.decoder_blocks:
            full = blk(full)
        pred = self.decoder_pred(self.decoder_norm(full))
        hidden = torch.ones(b, n, device=t.device, dtype=torch.bool)
        hidden.scatter_(1, visible, False)
        loss = F.mse_loss(pred[hidden].float(), self.patch_targets(x)[hidden])
        return loss, self.pool_tokens(enc, torch.div(visible, grid[0] * grid[1], rounding_mode="floor"))

    # ------------------------------------------------------------------------------------------------ the interface
    def pool_tokens(self, encoded: torch.Tensor, channel: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, dim) encoded tokens -> (B, in_chans * dim): each channel's tokens averaged on their own, the
        channels side by side. `channel`: each token's channel (B, N) where the tokens are a subset (the visible
        ones); a channel with no token there gets zeros. trainer.infer.embed pools an earlier block's tokens with
        it too (during forward_features, so a tiled image's tiles are averaged the same way)."""
        b, n, d = encoded.shape
        c = self.in_chans
        if channel is None:  # every token; within forward_features' tiling, the tiles of an image are averaged
            pooled = encoded.reshape(b, c, n // c, d).mean(dim=2).flatten(1)
            return pooled.reshape(b // self._tiles, self._tiles, -1).mean(dim=1)
        onehot = F.one_hot(channel, c).to(encoded.dtype)                          # (B, N, C)
        sums = onehot.transpose(1, 2) @ encoded                                   # (B, C, dim)
        return (sums / onehot.sum(dim=1).clamp(min=1)[..., None]).flatten(1)

    def tiles(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(B, C, H, W) -> (B * T, C, h, w): T tiles of at most `tile` px a side covering each image (evenly
        spaced, overlapping where a side is not a multiple of the tile), and T; an image within one tile is
        itself (T = 1)."""
        h, w = x.shape[-2:]
        if not self.tile or (h <= self.tile and w <= self.tile):
            return x, 1
        th, tw = min(h, self.tile), min(w, self.tile)
        crops = [x[..., y:y + th, x0:x0 + tw] for y in _starts(h, th) for x0 in _starts(w, tw)]
        return torch.stack(crops, dim=1).flatten(0, 1), len(crops)

    def forward_features(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        """Every token encoded, averaged per channel: (B, in_chans * dim). An image larger than `tile` px is
        encoded tile by tile (attention within a tile: the cost grows with the area, not its square) and its tiles
        averaged, a few images' tiles at a time (TILE_TOKENS_PER_PASS)."""
        x, self._tiles = self.tiles(x)
        try:
            if self._tiles == 1:
                return self.pool_tokens(self._encode(self.tokens(x)[0]))
            tokens_per_image = self._tiles * self.in_chans * (x.shape[-2] // self.patch) * (x.shape[-1] // self.patch)
            step = self._tiles * max(1, TILE_TOKENS_PER_PASS // tokens_per_image)
            return torch.cat([self.pool_tokens(self._encode(self.tokens(x[i:i + step])[0]))
                              for i in range(0, len(x), step)])
        finally:
            self._tiles = 1

    def forward_head(self, feats: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(feats, cell_type)

    def forward(self, x: torch.Tensor, cell_type: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, cell_type), cell_type)

    def feature_stages(self) -> list[list[nn.Module]]:
        """The encoder blocks (their token outputs; trainer.infer.embed pools a block's with `pool_tokens`)."""
        return [[blk] for blk in self.blocks]
