// An independent check of proto/v1/test_vectors.json, written from proto/v1/peer.proto's comments:
// probe generation, the DDV of a published cross-attention block, and GetInfo.genesis ids.
//   node tests/js/probes.mjs proto/v1/test_vectors.json      (exit 0: every vector matches)
import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";

const M64 = (1n << 64n) - 1n;
const GOLDEN = 0x9E3779B97F4A7C15n, MIX1 = 0xBF58476D1CE4E5B9n, MIX2 = 0x94D049BB133111EBn;

function splitmix64(seed, i) {  // output i (from 0) of SplitMix64 started at seed
  let z = (BigInt(seed) + BigInt(i + 1) * GOLDEN) & M64;
  z = ((z ^ (z >> 30n)) * MIX1) & M64;
  z = ((z ^ (z >> 27n)) * MIX2) & M64;
  return z ^ (z >> 31n);
}

function normals(seed, count) {  // Float32Array of standard normals (Box-Muller in float64)
  const out = new Float32Array(count);
  const seedBig = BigInt(seed) & M64;  // seed: a decimal string or a number
  for (let k = 0; 2 * k < count; k++) {
    const u1 = (Number(splitmix64(seedBig, 2 * k) >> 11n) + 0.5) * 2 ** -53;
    const u2 = (Number(splitmix64(seedBig, 2 * k + 1) >> 11n) + 0.5) * 2 ** -53;
    const r = Math.sqrt(-2 * Math.log(u1)), theta = 2 * Math.PI * u2;
    out[2 * k] = r * Math.cos(theta);
    if (2 * k + 1 < count) out[2 * k + 1] = r * Math.sin(theta);
  }
  return out;
}

function probes(spec, C) {  // x and x' as Float32Arrays, row-major (pair, token, channel)
  const size = spec.pair_count * spec.token_count * C;
  const z = normals(spec.seed, 2 * size);
  const x = z.slice(0, size), noise = z.slice(size), xp = new Float32Array(size);
  const p = Math.fround(spec.perturbation);
  for (let i = 0; i < size; i++) xp[i] = Math.fround(x[i] + Math.fround(p * noise[i]));
  return [x, xp];
}

const sha = (f32) => createHash("sha256").update(Buffer.from(f32.buffer, f32.byteOffset, f32.byteLength)).digest("hex");

function layerNorm(rows, width, w, b) {  // eps 1e-5, biased variance
  return rows.map((row) => {
    const mean = row.reduce((a, v) => a + v, 0) / width;
    const variance = row.reduce((a, v) => a + (v - mean) ** 2, 0) / width;
    return row.map((v, j) => ((v - mean) / Math.sqrt(variance + 1e-5)) * w[j] + b[j]);
  });
}

const matvec = (W, rows, cols, x) => Array.from({ length: rows }, (_, r) => {
  let s = 0;
  for (let c = 0; c < cols; c++) s += W[r * cols + c] * x[c];
  return s;
});

function response(t, m, tokens) {  // latents attending to tokens: the flattened (num_latents * latent_dim) output
  const P = "core.cross_attend_block.cross_attn.";
  const L = m.num_latents, D = m.latent_dim, C = m.token_dim, H = m.cross_heads, dh = m.cross_dim_head, inner = H * dh;
  const lat = Array.from({ length: L }, (_, i) => t["core.latents"].values.slice(i * D, (i + 1) * D));
  const q = layerNorm(lat, D, t[P + "norm.weight"].values, t[P + "norm.bias"].values)
    .map((x) => matvec(t[P + "fn.to_q.weight"].values, inner, D, x));
  const ctx = layerNorm(tokens, C, t[P + "norm_context.weight"].values, t[P + "norm_context.bias"].values)
    .map((x) => matvec(t[P + "fn.to_kv.weight"].values, 2 * inner, C, x));
  const out = [];
  for (let i = 0; i < L; i++) {
    const merged = new Array(inner).fill(0);
    for (let h = 0; h < H; h++) {
      const sims = ctx.map((kv) => {
        let s = 0;
        for (let d = 0; d < dh; d++) s += q[i][h * dh + d] * kv[h * dh + d];
        return s * dh ** -0.5;
      });
      const top = Math.max(...sims), e = sims.map((s) => Math.exp(s - top)), total = e.reduce((a, v) => a + v, 0);
      ctx.forEach((kv, j) => { for (let d = 0; d < dh; d++) merged[h * dh + d] += (e[j] / total) * kv[inner + h * dh + d]; });
    }
    const o = matvec(t[P + "fn.to_out.weight"].values, D, inner, merged).map((v, j) => v + t[P + "fn.to_out.bias"].values[j]);
    out.push(...o);
  }
  return out;
}

function ddv(v) {
  const m = v.model, spec = v.spec, C = m.token_dim, T = spec.token_count;
  const [x, xp] = probes(spec, C);
  const tokensOf = (a, j) => Array.from({ length: T }, (_, k) => Array.from(a.slice((j * T + k) * C, (j * T + k + 1) * C)));
  return Array.from({ length: spec.pair_count }, (_, j) => {
    const a = response(v.tensors, m, tokensOf(x, j)), b = response(v.tensors, m, tokensOf(xp, j));
    const dot = a.reduce((s, ai, i) => s + ai * b[i], 0);
    const na = Math.sqrt(a.reduce((s, ai) => s + ai * ai, 0)), nb = Math.sqrt(b.reduce((s, bi) => s + bi * bi, 0));
    return 1 - dot / Math.max(na * nb, 1e-8);
  });
}

function genesisId(seed, model) {  // Python's json.dumps(sort_keys=True): ", " and ": " separators
  const keys = Object.keys(model).sort();
  const text = "{" + keys.map((k) => `"${k}": ${model[k]}`).join(", ") + "}";
  return `${seed}:${createHash("sha256").update(text).digest("hex").slice(0, 12)}`;
}

const vectors = JSON.parse(readFileSync(process.argv[2], "utf8"));
const failures = [];
for (const s of vectors.splitmix64) {
  s.outputs.forEach((want, i) => { if (splitmix64(BigInt(s.seed), i).toString() !== want) failures.push(`splitmix64 ${s.seed}[${i}]`); });
}
for (const p of vectors.probes) {
  const [x, xp] = probes(p, p.token_dim);
  if (sha(x) !== p.x_sha256 || sha(xp) !== p.x_prime_sha256) failures.push(`probes seed ${p.seed}: digests differ`);
}
const got = ddv(vectors.ddv);
got.forEach((g, j) => { if (Math.abs(g - vectors.ddv.ddv[j]) > 1e-5) failures.push(`ddv[${j}] ${g} != ${vectors.ddv.ddv[j]}`); });
for (const g of vectors.genesis) if (genesisId(g.seed, g.model) !== g.id) failures.push(`genesis ${g.seed}: ${genesisId(g.seed, g.model)} != ${g.id}`);
if (failures.length) { console.error(failures.join("\n")); process.exit(1); }
console.log(`ok: ${vectors.probes.length} probe specs, ${got.length} DDV values, ${vectors.genesis.length} genesis ids`);
