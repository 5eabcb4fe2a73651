"""The stage-2 generator: a decoder-only transformer over a tokenizer's code grid.

Read top to bottom: what a position of the grid holds (CodeLayout), the conditions that are
prepended to the sequence (Condition), attention with a key-value cache, the blocks, and the
model with its loss.

The sequence is [condition tokens ; image codes[:-1]] and the logits from position Lc-1 on
predict the image codes, taming's Net2NetTransformer layout (cond_transformer.py:94-102) that
the official VQCT stage 2 keeps (docs/methods.md, "Stage 2"). A one-index quantizer (the VQGAN)
has one embedding table and one head. VQCT's positions carry adjective and noun indices; as in
the official mingpt_ours.py, each group has its own table, the column embeddings are
concatenated and fused by Linear + GELU (:136-142, :173-188), the last n_layer/4 blocks fork
into one branch per group with its own LayerNorm (:147-155, :197-203), each column has its own
head (bias on, :154-155), and the loss is the unweighted sum of the columns' cross-entropies
(:213-219).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class CodeLayout:
    """What one grid position holds: index groups, each (name, vocabulary, columns).

    VQGAN: (("codes", K, 1),). VQCT with adj_topk=k: (("adj", A, k), ("noun", N, 1)), the
    column order of the tokenizer's indices (its k nearest adjectives, then the noun)."""
    groups: tuple[tuple[str, int, int], ...]
    height: int
    width: int

    @property
    def columns(self) -> int:
        return sum(count for _, _, count in self.groups)

    @property
    def length(self) -> int:
        return self.height * self.width

    def column_vocab(self) -> list[int]:
        return [vocab for _, vocab, count in self.groups for _ in range(count)]

    def column_group(self) -> list[int]:
        return [g for g, (_, _, count) in enumerate(self.groups) for _ in range(count)]

    def as_dict(self) -> dict:
        return {"groups": [list(g) for g in self.groups], "height": self.height, "width": self.width}

    @classmethod
    def from_dict(cls, d: dict) -> "CodeLayout":
        return cls(tuple((str(n), int(v), int(c)) for n, v, c in d["groups"]), int(d["height"]), int(d["width"]))


# ---------------------------------------------------------------------------------------------
# Conditions: each turns its input into (B, Lc, n_embd) tokens, and knows its "null" form for
# classifier-free guidance (LlamaGen: a null class id, a fixed unconditional caption embedding).
# ---------------------------------------------------------------------------------------------

class Unconditional(nn.Module):
    """One learned start token (taming's SOSProvider)."""
    length = 1
    guided = False

    def __init__(self, n_embd: int):
        super().__init__()
        self.start = nn.Parameter(torch.zeros(1, 1, n_embd))

    def forward(self, cond, batch: int, drop: torch.Tensor | None = None) -> torch.Tensor:
        return self.start.expand(batch, -1, -1)


class CaptionCondition(nn.Module):
    """Token features of a frozen text model (B, Lt, Dt) and their mask, projected to n_embd, as
    LlamaGen feeds T5 features. Padding positions take a learned pad vector; a dropped caption is
    replaced whole by a fixed random embedding (LlamaGen's uncond_embedding, gpt.py:89-116)."""
    guided = True

    def __init__(self, n_embd: int, text_dim: int, length: int):
        super().__init__()
        self.length = length
        self.proj = nn.Linear(text_dim, n_embd)
        self.pad = nn.Parameter(torch.zeros(n_embd))
        self.register_buffer("null", torch.randn(length, text_dim) / math.sqrt(text_dim))

    def forward(self, cond: dict, batch: int, drop: torch.Tensor | None = None) -> torch.Tensor:
        # the text model's features arrive in fp32; under trainer.precision=bf16 the weights are bf16
        feats, mask = cond["features"].to(self.proj.weight.dtype), cond["mask"].bool()
        if feats.shape[1] != self.length:
            raise ValueError(f"caption features have {feats.shape[1]} tokens; the generator takes {self.length}")
        if drop is not None:
            feats = torch.where(drop[:, None, None], self.null.to(feats.dtype), feats)
            mask = mask | drop[:, None]
        tokens = self.proj(feats)
        return torch.where(mask[..., None], tokens, self.pad.to(tokens.dtype))


class SegmentationCondition(nn.Module):
    """A class map at the code grid (B, H, W), one embedded token per cell; class `classes` is the
    null map. (The official VQCT tokenizes the map with a second, frozen VQ model; a class map at
    the grid carries the same layout without a second stage-1 model: docs/methods.md.)"""
    guided = True

    def __init__(self, n_embd: int, classes: int, length: int):
        super().__init__()
        self.classes = classes
        self.length = length
        self.embed = nn.Embedding(classes + 1, n_embd)

    def forward(self, cond: torch.Tensor, batch: int, drop: torch.Tensor | None = None) -> torch.Tensor:
        labels = cond.reshape(batch, -1).long()
        if labels.shape[1] != self.length:
            raise ValueError(f"segmentation has {labels.shape[1]} cells; the generator takes {self.length}")
        if drop is not None:
            labels = torch.where(drop[:, None], torch.full_like(labels, self.classes), labels)
        return self.embed(labels)


# ---------------------------------------------------------------------------------------------
# Attention with a key-value cache, and the pre-LN block (minGPT's, mingpt.py:37-122).
# ---------------------------------------------------------------------------------------------

class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to the
    sequence length: sampling then costs one position per step instead of the whole prefix."""

    def __init__(self, layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.length = 0  # positions written, advanced by the model after all layers ran

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def _causal_mask(queries: int, keys: int, start: int, device: torch.device) -> dict:
    """SDPA's mask arguments for queries at absolute positions start.. over keys 0..start+queries-1:
    query i sees keys 0..start+i. Training and the prefill (start 0, square) pass is_causal, whose
    CPU flash kernel skips the masked half instead of reading a written-out mask (the same
    outputs; attention alone 1.3-1.7x faster at 1,056-1,312 positions, within noise for the
    whole step at the scenes' 287-511: docs/performance.md, "Stage 2"). A single query sees
    every key, so it needs no mask; only a multi-token step into a filled cache does."""
    if start == 0 and queries == keys:
        return {"is_causal": True}
    if queries == 1:
        return {}
    return {"attn_mask": torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=start)}


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, layer: int):
        super().__init__()
        self.n_head, self.layer, self.dropout = n_head, layer, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (y.reshape(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for y in self.qkv(x).split(c, dim=2))
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.write(self.layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, **_causal_mask(t, k.shape[2], start, x.device),
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, layer: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, layer)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------

class CodeGenerator(nn.Module):
    """condition: "none" | "caption" | "segmentation". branch_layers: blocks of each group's own
    branch after the shared trunk (None: n_layer // 4 when the layout has several groups, as the
    official VQCT code; 0 for one group)."""

    def __init__(self, layout: CodeLayout, condition: str = "none", n_layer: int = 4, n_head: int = 4,
                 n_embd: int = 128, dropout: float = 0.0, branch_layers: int | None = None,
                 text_dim: int = 0, caption_tokens: int = 0, seg_classes: int = 0):
        super().__init__()
        self.layout, self.n_head, self.n_embd = layout, n_head, n_embd
        self.condition = self._condition(condition, n_embd, text_dim, caption_tokens, seg_classes, layout.length)
        groups = len(layout.groups)
        if branch_layers is None:
            branch_layers = n_layer // 4 if groups > 1 else 0
        if not 0 <= branch_layers < n_layer:
            raise ValueError(f"branch_layers={branch_layers} must be in [0, n_layer={n_layer})")
        self.trunk_layers = n_layer - branch_layers
        self.total_layers = self.trunk_layers + groups * branch_layers  # one cache slot per block
        self.seq_len = self.condition.length + layout.length - 1

        self.tables = nn.ModuleList(nn.Embedding(vocab, n_embd) for _, vocab, _ in layout.groups)
        self.fuse = (nn.Sequential(nn.Linear(layout.columns * n_embd, n_embd), nn.GELU())
                     if layout.columns > 1 else nn.Identity())
        self.pos = nn.Parameter(torch.zeros(1, self.seq_len, n_embd))
        self.drop = nn.Dropout(dropout)
        self.trunk = nn.ModuleList(Block(n_embd, n_head, dropout, i) for i in range(self.trunk_layers))
        self.branches = nn.ModuleList(
            nn.ModuleList(Block(n_embd, n_head, dropout, self.trunk_layers + g * branch_layers + i)
                          for i in range(branch_layers))
            for g in range(groups))
        self.norms = nn.ModuleList(nn.LayerNorm(n_embd) for _ in range(groups))
        self.heads = nn.ModuleList(nn.Linear(n_embd, vocab, bias=groups > 1) for vocab in layout.column_vocab())
        self.apply(self._init)

    @staticmethod
    def _condition(kind: str, n_embd: int, text_dim: int, caption_tokens: int, seg_classes: int,
                   cells: int) -> nn.Module:
        if kind == "none":
            return Unconditional(n_embd)
        if kind == "caption":
            return CaptionCondition(n_embd, text_dim, caption_tokens)
        if kind == "segmentation":
            return SegmentationCondition(n_embd, seg_classes, cells)
        raise ValueError(f"condition={kind!r}: choose none, caption or segmentation")

    def _init(self, module: nn.Module) -> None:
        # minGPT's init (mingpt.py:146-153, mingpt_ours.py:164-171)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def guided(self) -> bool:
        return self.condition.guided

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T, columns) indices -> (B, T, n_embd)."""
        groups = self.layout.column_group()
        parts = [self.tables[g](codes[..., col]) for col, g in enumerate(groups)]
        return self.fuse(torch.cat(parts, dim=-1))

    def hidden(self, tokens: torch.Tensor, cache: KVCache | None = None) -> list[torch.Tensor]:
        """Token embeddings (B, T, n_embd) at positions cache.length.. -> one normed hidden state
        per group."""
        start = cache.length if cache is not None else 0
        x = self.drop(tokens + self.pos[:, start:start + tokens.shape[1]])
        for block in self.trunk:
            x = block(x, cache)
        outs = []
        for branch, norm in zip(self.branches, self.norms):
            y = x
            for block in branch:
                y = block(y, cache)
            outs.append(norm(y))
        if cache is not None:
            cache.length += tokens.shape[1]
        return outs

    def logits(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        groups = self.layout.column_group()
        return [head(hidden[g]) for head, g in zip(self.heads, groups)]

    def condition_tokens(self, cond, batch: int, drop: torch.Tensor | None = None) -> torch.Tensor:
        return self.condition(cond, batch, drop)

    def forward(self, codes: torch.Tensor, cond=None, drop: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """codes (B, L, columns) -> (per-column logits (B, L, V), loss: the sum over columns of
        the mean cross-entropy on image positions). drop (B,) bool: samples whose condition is
        replaced by its null form (condition dropout for guidance)."""
        b, length, _ = codes.shape
        if length != self.layout.length:
            raise ValueError(f"codes have {length} positions; the layout has {self.layout.length}")
        cond_tokens = self.condition_tokens(cond, b, drop)
        tokens = torch.cat([cond_tokens, self.embed_codes(codes[:, :-1])], dim=1)
        logits = [l[:, cond_tokens.shape[1] - 1:] for l in self.logits(self.hidden(tokens))]
        loss = sum(F.cross_entropy(l.reshape(-1, l.shape[-1]).float(), codes[..., col].reshape(-1))
                   for col, l in enumerate(logits))
        return logits, loss

    def new_cache(self, batch: int) -> KVCache:
        p = self.pos
        return KVCache(self.total_layers, batch, self.n_head, self.seq_len, self.n_embd // self.n_head,
                       p.dtype, p.device)

    def decay_groups(self, weight_decay: float) -> list[dict]:
        """minGPT's AdamW groups (cond_transformer.py:308-352): Linear weights decay; biases,
        norms, embeddings and the position table do not."""
        decay = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
                {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0}]


def own_and_null_losses(model: CodeGenerator, codes: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of CODES given each sample's own condition, and given the null condition; their
    difference is what the condition tells the generator (about 0 when it ignores it). An
    unconditional generator's two are the same."""
    _, own = model(codes, cond)
    if not model.guided:
        return own, own
    _, null = model(codes, cond, torch.ones(len(codes), dtype=torch.bool, device=codes.device))
    return own, null
