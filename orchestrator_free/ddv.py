"""DDV probes (ModelDiff's decision distance vectors) in token space.

Both sides generate the same probe pairs from a shared spec, so no data is needed or sent:
``x_j ~ N(0, 1)`` of shape (token_count, C) and ``x'_j = x_j + perturbation * n_j``. A model's response
``attnRep(M, kv)`` is its (task's) latents attending to the probe tokens through its encoder
cross-attention with the key/value projections ``kv``; the DDV holds, per pair, the cosine distance
between the responses to ``x_j`` and ``x'_j``.

The normals come from a generator any language can rebuild from the .proto's comments (``normals``):
SplitMix64 over a counter, Box-Muller in float64, rounded to float32. ``proto/v1/test_vectors.json``
holds test vectors (spec -> probe values and digests -> DDV of a small published block).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from einops import repeat
from torch import Tensor

from crossback.config.selection import ProbeSpec
from crossback.models.learner import ContinualLearner
from crossback.models.perceiver import join_kv

CROSS_ATTN = "core.cross_attend_block.cross_attn"
GOLDEN, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def splitmix64(seed: int, count: int) -> np.ndarray:
    """Outputs 0..count-1 of SplitMix64 started at ``seed``: z_i = mix(seed + (i + 1) * GOLDEN mod 2^64)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed % 2**64) + (np.arange(1, count + 1, dtype=np.uint64) * np.uint64(GOLDEN))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        return z ^ (z >> np.uint64(31))


NORMAL_BLOCK = 1 << 16  # normals made per step: bounds the float64 temporaries of a large probe


def normals(seed: int, count: int) -> np.ndarray:
    """``count`` standard normals (float32): u_i = ((z_i >> 11) + 0.5) / 2^53 in (0, 1); for every pair
    (u_2k, u_2k+1), r = sqrt(-2 ln u_2k), n_2k = r cos(2 pi u_2k+1), n_2k+1 = r sin(2 pi u_2k+1), in
    float64, each rounded to the nearest float32 (an odd count drops the last sine)."""
    out = np.empty(count + count % 2, dtype=np.float32)
    for start in range(0, len(out), NORMAL_BLOCK):
        stop = min(start + NORMAL_BLOCK, len(out))
        z = splitmix64((seed + start * GOLDEN) % 2**64, stop - start)  # outputs start..stop-1 of the stream
        u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        r, theta = np.sqrt(-2.0 * np.log(u[0::2])), 2.0 * math.pi * u[1::2]
        out[start:stop:2], out[start + 1:stop:2] = r * np.cos(theta), r * np.sin(theta)
    return out[:count]


def probe_pairs(spec: ProbeSpec, token_dim: int) -> tuple[Tensor, Tensor]:
    """(x, x'), each (pair_count, token_count, C) float32: the first P*T*C normals of the spec's seed in
    row-major order are x, the next P*T*C the noise n; x' = x + float32(perturbation) * n in float32."""
    shape = (spec.pair_count, spec.token_count, token_dim)
    size = int(np.prod(shape))
    z = normals(spec.seed, 2 * size)
    x, noise = z[:size].reshape(shape), z[size:].reshape(shape)
    x_prime = x + np.float32(spec.perturbation) * noise
    return torch.from_numpy(x), torch.from_numpy(x_prime)


@torch.no_grad()
def attn_rep(learner: ContinualLearner, task: int, kv: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """(batch, num_latents * latent_dim): the task's latents cross-attending to ``tokens`` through ``kv``."""
    params = learner.params_for(task)
    prefix = CROSS_ATTN + "."
    sub = {n[len(prefix):]: t for n, t in params.items() if n.startswith(prefix)}
    sub["fn.to_kv.weight"] = join_kv(kv).to(learner.device)
    tokens = tokens.to(learner.device)
    latents = repeat(params["core.latents"], "n d -> b n d", b=tokens.shape[0])
    module = learner.net.get_submodule(CROSS_ATTN)
    out = learner.call(module, sub, (latents,), {"context": tokens})
    return out.flatten(1)


PAIR_CHUNK = 64  # pairs per forward pass: bounds a probe's activations whatever its pair count


def ddv(learner: ContinualLearner, task: int, kv: dict[str, Tensor], spec: ProbeSpec) -> Tensor:
    x, x_prime = probe_pairs(spec.validate(), learner.cfg.token_dim)
    out = []
    for start in range(0, spec.pair_count, PAIR_CHUNK):  # each pair's distance depends on that pair only
        a = attn_rep(learner, task, kv, x[start:start + PAIR_CHUNK])
        b = attn_rep(learner, task, kv, x_prime[start:start + PAIR_CHUNK])
        out.append(1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1))
    return torch.cat(out).cpu()


def probe_bytes(spec: ProbeSpec, cfg) -> int:
    """An upper estimate of the memory one probe holds at once: the probe tokens and their normals, and
    one chunk's activations for both members of its pairs (measured: within 2x of what torch allocates)."""
    tokens = spec.pair_count * spec.token_count * cfg.token_dim * 4
    pairs = min(spec.pair_count, PAIR_CHUNK)
    width = max(cfg.latent_dim, cfg.kv_dim)
    per_pair = (spec.token_count * cfg.kv_dim * 6 + cfg.num_latents * width * 8
                + cfg.cross_heads * cfg.num_latents * spec.token_count * 3) * 4
    return 4 * tokens + 2 * pairs * per_pair
