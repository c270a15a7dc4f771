"""MergeNet's low-rank parametric knowledge adapter (LPKA), for two matrices of any shapes.

Both matrices are re-encoded by a truncated SVD, ``W = B A`` with ``B = U_r S_r^1/2`` and
``A = S_r^1/2 V_r^T`` (rank ``r``). The target's address matrix ``A_t`` (r x m) attends to the source's
``A_s`` (r x M) four ways — each unfolded by rows (r tokens of width m / M) or by columns (m / M tokens
of width r) — and a learnable weight per way mixes the four results, which all come back shaped like
``A_t``. Knowledge-transfer layers repeat this on their predecessor's output. Because every unfolding
is projected to one attention width, the two matrices need not share any dimension.

Our choices where the paper is silent: the layers are residual (``A_t + sum_i w_i Attn_i``) with the
weights ``w`` starting at zero, so the first generation reproduces the target exactly and an untrained
adapter cannot overwrite what the task learned; the generated matrix keeps the target's part outside
the rank-``r`` subspace, ``W~ = W_t + B_t (A~_t - A_t)``; queries and keys are layer-normalised.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

UNFOLDINGS = (("rows", "rows"), ("rows", "cols"), ("cols", "rows"), ("cols", "cols"))  # (target, source)


def low_rank(w: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(B, A) with ``B @ A`` the best rank-``rank`` approximation of ``w`` (singular values split evenly)."""
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return (u[:, :r] * root).to(w.dtype), (root[:, None] * vh[:r]).to(w.dtype)


def unfold(a: Tensor, how: str) -> Tensor:
    """A sequence of vectors from a matrix: its rows, or its columns."""
    return a if how == "rows" else a.T


class UnfoldedAttention(nn.Module):
    """Softmax attention from one unfolding of the target to one of the source, back in the target's shape."""

    def __init__(self, query_width: int, source_width: int, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm_q, self.norm_kv = nn.LayerNorm(query_width), nn.LayerNorm(source_width)
        self.to_q = nn.Linear(query_width, dim, bias=False)
        self.to_k = nn.Linear(source_width, dim, bias=False)
        self.to_v = nn.Linear(source_width, dim, bias=False)
        self.to_out = nn.Linear(dim, query_width)

    def forward(self, query: Tensor, source: Tensor) -> Tensor:
        q = rearrange(self.to_q(self.norm_q(query)), "n (h d) -> h n d", h=self.heads)
        kv = self.norm_kv(source)
        k = rearrange(self.to_k(kv), "n (h d) -> h n d", h=self.heads)
        v = rearrange(self.to_v(kv), "n (h d) -> h n d", h=self.heads)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "h n d -> n (h d)"))


class TransferLayer(nn.Module):
    """One knowledge-transfer layer: A_t <- A_t + sum over the four unfoldings of w_i Attn_i(A_t, A_s)."""

    def __init__(self, target: tuple[int, int], source: tuple[int, int], dim: int, heads: int):
        super().__init__()
        widths = {"rows": lambda shape: shape[1], "cols": lambda shape: shape[0]}
        self.attn = nn.ModuleList(UnfoldedAttention(widths[t](target), widths[s](source), dim, heads)
                                  for t, s in UNFOLDINGS)
        self.weights = nn.Parameter(torch.zeros(len(UNFOLDINGS)))

    def forward(self, a_t: Tensor, a_s: Tensor) -> Tensor:
        mixed = a_t
        for w, attn, (t, s) in zip(self.weights, self.attn, UNFOLDINGS):
            out = attn(unfold(a_t, t), unfold(a_s, s))
            mixed = mixed + w * unfold(out, t)  # columns come back transposed to the target's shape
        return mixed


class LPKA(nn.Module):
    """Generates a target matrix from (target, source) matrices of shapes ``target`` and ``source``."""

    def __init__(self, target: tuple[int, int], source: tuple[int, int], rank: int, dim: int, heads: int, layers: int):
        super().__init__()
        self.rank = min(rank, *target, *source)
        a_t, a_s = (self.rank, target[1]), (self.rank, source[1])
        self.layers = nn.ModuleList(TransferLayer(a_t, a_s, dim, heads) for _ in range(layers))

    def forward(self, w_t: Tensor, w_s: Tensor) -> Tensor:
        b_t, a_t = low_rank(w_t, self.rank)
        _, a_s = low_rank(w_s, self.rank)
        merged = a_t
        for layer in self.layers:
            merged = layer(merged, a_s)
        return w_t.detach() + b_t @ (merged - a_t)

    def mixing_weights(self) -> list[list[float]]:
        return [[round(float(w), 6) for w in layer.weights.detach()] for layer in self.layers
                if isinstance(layer, TransferLayer)]
