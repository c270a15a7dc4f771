"""Test vectors for another implementation of the peer contract (proto/v1/peer.proto):

    python -m crossback.node.wire_vectors   # writes proto/v1/test_vectors.json

Seeds and 64-bit outputs are decimal strings (a JSON number loses digits past 2^53 in many parsers).

- ``splitmix64``: the first outputs of the probe generator's SplitMix64 for a few seeds;
- ``probes``: for a few ProbeSpecs and token widths, the first normals, and sha256 of x and of x'
  (float32, little-endian, row-major (pair, token, channel));
- ``ddv``: a small published encoder cross-attention (every tensor it runs with, by name, as lists)
  with a spec and the DDV this node answers for it;
- ``genesis``: genesis seeds and core shapes with the ``GetInfo.genesis`` id they give;
- ``payload_names``: the tensor names of every payload kind for the image and text layouts of one model.

tests/test_wire_spec.py fails when the committed file is stale, and checks the vectors with Node.js
(tests/js/probes.mjs, written from the .proto's comments alone) where node is installed.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

VECTORS = Path(__file__).resolve().parents[1] / "proto" / "v1" / "test_vectors.json"
SPECS = [dict(seed=0, pair_count=2, token_count=3, perturbation=0.1, token_dim=4),
         dict(seed=7, pair_count=5, token_count=16, perturbation=0.25, token_dim=64),
         dict(seed=2**63 - 1, pair_count=1, token_count=1, perturbation=1.0, token_dim=3)]
TINY = dict(token_dim=4, num_latents=3, latent_dim=6, depth=1, cross_heads=2, cross_dim_head=5, latent_heads=1,
            latent_dim_head=4, queries_dim=4)


def _digest(t) -> str:
    return hashlib.sha256(t.contiguous().numpy().astype("<f4").tobytes()).hexdigest()


def build() -> dict:

    from crossback.config.model import PerceiverConfig
    from crossback.config.selection import ProbeSpec
    from crossback.config.transfer import PART_KINDS
    from crossback.models.borrowed import part_names
    from crossback.models.learner import ContinualLearner
    from crossback.models.perceiver import split_kv
    from crossback.orchestrator_free.ddv import CROSS_ATTN, ddv, normals, probe_pairs, splitmix64
    from crossback.orchestrator_free.genesis import genesis_id

    out: dict = {"splitmix64": [{"seed": str(s), "outputs": [str(int(v)) for v in splitmix64(s, 4)]}
                                for s in (0, 1, 2**64 - 1)]}
    out["probes"] = []
    for spec in SPECS:
        fields = {k: v for k, v in spec.items() if k != "token_dim"}
        x, x_prime = probe_pairs(ProbeSpec(**fields), spec["token_dim"])
        out["probes"].append({**spec, "seed": str(spec["seed"]), "first_normals": [float(v) for v in normals(spec["seed"], 6)],
                              "x_first": [float(v) for v in x.flatten()[:4]],
                              "x_prime_first": [float(v) for v in x_prime.flatten()[:4]],
                              "x_sha256": _digest(x), "x_prime_sha256": _digest(x_prime)})
    cfg = PerceiverConfig(**TINY)
    learner = ContinualLearner(cfg, "text", "packnet", seed=3, genesis=11)
    learner.begin_task("t", 2)
    learner.end_task()
    params = learner.params_for(0)
    block = {n: params[n] for n in sorted(params) if n.startswith(CROSS_ATTN + ".") or n == "core.latents"}
    spec = ProbeSpec(seed=5, pair_count=6, token_count=4, perturbation=0.3)
    vector = ddv(learner, 0, split_kv(params["core.cross_attend_block.cross_attn.fn.to_kv.weight"]), spec)
    out["ddv"] = {"model": TINY, "spec": {"seed": 5, "pair_count": 6, "token_count": 4, "perturbation": 0.3},
                  "tensors": {n: {"shape": list(t.shape), "values": [float(v) for v in t.flatten()]} for n, t in block.items()},
                  "ddv": [float(v) for v in vector]}
    out["genesis"] = [{"seed": s, "model": shape, "id": genesis_id(s, PerceiverConfig(**shape))}
                      for s, shape in ((0, TINY), (42, {k: getattr(PerceiverConfig(), k) for k in TINY}))]
    names = {}
    for modality in ("image", "text"):
        shapes = ContinualLearner(PerceiverConfig(), modality, "packnet", 0)
        shapes.begin_task("t", 2)
        shapes.end_task()
        own = shapes.part_shapes(0)
        names[modality] = {kind: {n: list(own[n]) for n in part_names(kind, own)} for kind in PART_KINDS}
    out["payload_names"] = {"model": "PerceiverConfig() defaults", **names}
    return out


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


if __name__ == "__main__":
    VECTORS.write_text(render())
    print(f"wrote {VECTORS}", file=sys.stderr)
