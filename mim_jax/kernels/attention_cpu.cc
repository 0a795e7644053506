// Fused softmax attention for XLA:CPU (float32), forward and backward, called through the XLA FFI.
//
// Why: XLA:CPU runs attention as separate batched dots, transposes, and softmax fusions over [B, H, T, S]
// logits. At ViT sizes (T, S = 17..197, head dim 32..64) that costs 2-3x more than the arithmetic needs
// (docs/performance.md). Here one (batch, head) pair is one task: its keys are transposed once into a
// zero-padded [D, S16] tile, and every product is a register-blocked 4 x 64 micro-kernel on 16-wide vectors.
//
// Layout: q [B, T, H, D], k and v [B, S, H, D], out [B, T, H, D] (the models' token-major layout, so no
// transposes outside); probs [B, H, T, S16] is the saved softmax (S16 = S rounded up to 16, zero-padded), the
// residual of the backward pass. D must be a multiple of 16. Pairs run in parallel on XLA's own intra-op
// thread pool (cpu_parallel.h).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));  // GCC vector extension: AVX-512 or 2 x AVX2 registers
inline v16 load(const float* p) { v16 r; std::memcpy(&r, p, sizeof r); return r; }
inline void store(float* p, v16 x) { std::memcpy(p, &x, sizeof x); }
typedef int32_t v16i __attribute__((vector_size(64)));

// e^x on 16 lanes, for x <= 88 (softmax feeds it x - max <= 0). Why not std::exp: it is scalar (glibc's vector
// expf is only used under -ffast-math, which would also drop NaN propagation), and the softmax's exponentials
// were a large part of the forward pass. Range reduction x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two
// for precision), then a degree-7 polynomial for e^r (Cephes' expf coefficients; about 1 ulp), times 2^n built
// in the exponent bits. Below -87 the result is 0 (e^-87 is near the smallest normal float); NaN stays NaN.
inline v16 exp16(v16 x) {
  const v16 lo = v16{} - 87.0f, hi = v16{} + 88.0f;
  v16 xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const v16 magic = v16{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const v16 n = (xc * 1.44269504088896341f + magic) - magic;
  const v16 r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  v16 p = v16{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const v16 er = p * (r * r) + r + 1.0f;
  const v16 n_finite = n == n ? n : v16{};  // NaN lanes: keep the int conversion defined (er carries the NaN)
  const v16i bits = (__builtin_convertvector(n_finite, v16i) + 127) << 23;
  v16 two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return x < lo ? v16{} : er * two_n;
}

inline float sum16(v16 x) {
  float s = 0.0f;
  for (int i = 0; i < 16; ++i) s += x[i];
  return s;
}

// C[m, 0:16*NV] = alpha * sum_k A(m, k) * B[k, 0:16*NV] for m < MR, where A(m, k) = A[m*sam + k*sak].
template <int MR, int NV>
inline void micro(int64_t K, const float* A, int64_t sam, int64_t sak, const float* B, int64_t ldb, float* C,
                  int64_t ldc, float alpha) {
  v16 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = v16{};
  for (int64_t k = 0; k < K; ++k) {
    v16 b[NV];
    for (int j = 0; j < NV; ++j) b[j] = load(B + k * ldb + 16 * j);
    for (int i = 0; i < MR; ++i) {
      const float a = A[i * sam + k * sak];
      for (int j = 0; j < NV; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) store(C + i * ldc + 16 * j, acc[i][j] * alpha);
}

template <int NV>
void gemm_rows(int64_t M, int64_t K, const float* A, int64_t sam, int64_t sak, const float* B, int64_t ldb, float* C,
               int64_t ldc, float alpha) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) micro<4, NV>(K, A + m * sam, sam, sak, B, ldb, C + m * ldc, ldc, alpha);
  const float* a = A + m * sam;
  float* c = C + m * ldc;
  switch (M - m) {
    case 3: micro<3, NV>(K, a, sam, sak, B, ldb, c, ldc, alpha); break;
    case 2: micro<2, NV>(K, a, sam, sak, B, ldb, c, ldc, alpha); break;
    case 1: micro<1, NV>(K, a, sam, sak, B, ldb, c, ldc, alpha); break;
    default: break;
  }
}

// C[M, N] = alpha * A(M, K) . B[K, N], B and C row-major with row strides ldb, ldc; N a multiple of 16.
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak, const float* B, int64_t ldb,
          float* C, int64_t ldc, float alpha) {
  for (int64_t n = 0; n < N; n += 64) {
    switch (std::min<int64_t>(4, (N - n) / 16)) {
      case 4: gemm_rows<4>(M, K, A, sam, sak, B + n, ldb, C + n, ldc, alpha); break;
      case 3: gemm_rows<3>(M, K, A, sam, sak, B + n, ldb, C + n, ldc, alpha); break;
      case 2: gemm_rows<2>(M, K, A, sam, sak, B + n, ldb, C + n, ldc, alpha); break;
      default: gemm_rows<1>(M, K, A, sam, sak, B + n, ldb, C + n, ldc, alpha); break;
    }
  }
}

inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// x [S rows of D, row stride rs] -> xt [D, S16], the padding columns left as they are (zero).
void transpose_into(const float* x, int64_t S, int64_t D, int64_t rs, float* xt, int64_t S16) {
  for (int64_t s = 0; s < S; ++s)
    for (int64_t d = 0; d < D; ++d) xt[d * S16 + s] = x[s * rs + d];
}

// One (batch, head) pair: q rows [T, D] with row stride qs; k and v rows [S, D] with stride kvs; out rows with
// stride os; p its [T, S16] softmax; kt a [D, S16] scratch tile whose padding columns are 0.
void forward_pair(const float* q, int64_t qs, const float* k, const float* v, int64_t kvs, float* out, int64_t os,
                  float* p, int64_t T, int64_t S, int64_t D, int64_t S16, float* kt) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  transpose_into(k, S, D, kvs, kt, S16);
  gemm(T, S16, D, q, qs, 1, kt, S16, p, S16, scale);  // logits
  const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  for (int64_t t = 0; t < T; ++t) {  // softmax over the S real keys; padding probabilities are 0
    float* row = p + t * S16;
    const float m = *std::max_element(row, row + S);
    v16 sum{};
    for (int64_t s = 0; s < S16; s += 16) {
      const v16 e = exp16(load(row + s) - m);
      const v16 kept = lane + static_cast<int32_t>(s) < static_cast<int32_t>(S) ? e : v16{};  // padding -> 0
      store(row + s, kept);
      sum += kept;
    }
    const float inv = 1.0f / sum16(sum);
    for (int64_t s = 0; s < S16; s += 16) store(row + s, load(row + s) * inv);
  }
  gemm(T, D, S, p, S16, 1, v, kvs, out, os, 1.0f);  // out = P V
}

// The gradients of one pair: g (d out) rows with stride gs; dq rows with stride dqs, dk and dv with dkvs.
// scratch: [D, S16] (padding columns 0) then [T, S16].
void backward_pair(const float* q, int64_t qs, const float* k, const float* v, int64_t kvs, const float* p,
                   const float* g, int64_t gs, float* dq, int64_t dqs, float* dk, float* dv, int64_t dkvs,
                   int64_t T, int64_t S, int64_t D, int64_t S16, float* scratch) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  float* vt = scratch;
  float* ds = scratch + D * S16;
  transpose_into(v, S, D, kvs, vt, S16);
  gemm(T, S16, D, g, gs, 1, vt, S16, ds, S16, 1.0f);  // dP = dO V^T
  for (int64_t t = 0; t < T; ++t) {  // dLogits = P * (dP - rowsum(P * dP)), times the scale
    const float* pr = p + t * S16;
    float* dr = ds + t * S16;
    float dot = 0.0f;
    for (int64_t s = 0; s < S16; ++s) dot += pr[s] * dr[s];
    for (int64_t s = 0; s < S16; ++s) dr[s] = pr[s] * (dr[s] - dot) * scale;
  }
  gemm(T, D, S, ds, S16, 1, k, kvs, dq, dqs, 1.0f);  // dQ = dLogits K
  gemm(S, D, T, ds, 1, S16, q, qs, dk, dkvs, 1.0f);  // dK = dLogits^T Q
  gemm(S, D, T, p, 1, S16, g, gs, dv, dkvs, 1.0f);   // dV = P^T dO
}

ffi::Error CheckHeadDim(int64_t D) {
  if (D % 16 != 0) return ffi::Error::InvalidArgument("attention_cpu: head dim must be a multiple of 16");
  return ffi::Error::Success();
}

// Separate operands: q [B, T, H, D], k and v [B, S, H, D] (MAE's last decoder block: only masked queries).
struct Separate {
  int64_t B, T, S, H, D, S16;
  static ffi::ErrorOr<Separate> From(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k) {
    auto qd = q.dimensions(), kd = k.dimensions();
    if (qd.size() != 4 || kd.size() != 4 || qd[0] != kd[0] || qd[2] != kd[2] || qd[3] != kd[3])
      return ffi::Unexpected(ffi::Error::InvalidArgument("attention_cpu: q must be [B, T, H, D], k, v [B, S, H, D]"));
    return Separate{qd[0], qd[1], kd[1], qd[2], qd[3], round16(kd[1])};
  }
  int64_t q_offset(int64_t b, int64_t h) const { return (b * T * H + h) * D; }
  int64_t kv_offset(int64_t b, int64_t h) const { return (b * S * H + h) * D; }
};

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> probs) {
  auto dims = Separate::From(q, k);
  if (dims.has_error()) return dims.error();
  const Separate d = dims.value();
  if (auto e = CheckHeadDim(d.D); e.failure()) return e;
  const float *Q = q.typed_data(), *K = k.typed_data(), *V = v.typed_data();
  float *O = out->typed_data(), *P = probs->typed_data();
  const int64_t rs = d.H * d.D;
  mim_jax::parallel_for(pool, d.B * d.H, d.D * d.S16, [=](int64_t bh, float* kt) {
    const int64_t b = bh / d.H, h = bh % d.H, qo = d.q_offset(b, h), ko = d.kv_offset(b, h);
    forward_pair(Q + qo, rs, K + ko, V + ko, rs, O + qo, rs, P + bh * d.T * d.S16, d.T, d.S, d.D, d.S16, kt);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::F32> probs, ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv) {
  auto dims = Separate::From(q, k);
  if (dims.has_error()) return dims.error();
  const Separate d = dims.value();
  if (auto e = CheckHeadDim(d.D); e.failure()) return e;
  const float *Q = q.typed_data(), *K = k.typed_data(), *V = v.typed_data(), *P = probs.typed_data(),
              *G = dout.typed_data();
  float *dQ = dq->typed_data(), *dK = dk->typed_data(), *dV = dv->typed_data();
  const int64_t rs = d.H * d.D;
  mim_jax::parallel_for(pool, d.B * d.H, (d.D + d.T) * d.S16, [=](int64_t bh, float* scratch) {
    const int64_t b = bh / d.H, h = bh % d.H, qo = d.q_offset(b, h), ko = d.kv_offset(b, h);
    backward_pair(Q + qo, rs, K + ko, V + ko, rs, P + bh * d.T * d.S16, G + qo, rs, dQ + qo, rs, dK + ko, dV + ko,
                  rs, d.T, d.S, d.D, d.S16, scratch);
  });
  return ffi::Error::Success();
}

// Packed operands: qkv [B, N, 3, H, D], the qkv projection's output as it is (no slicing copies); the
// gradient comes back in the same layout. out and d out are [B, N, H, D].
struct Packed {
  int64_t B, N, H, D, S16;
  static ffi::ErrorOr<Packed> From(const ffi::Buffer<ffi::F32>& qkv) {
    auto x = qkv.dimensions();
    if (x.size() != 5 || x[2] != 3)
      return ffi::Unexpected(ffi::Error::InvalidArgument("attention_cpu: packed qkv must be [B, N, 3, H, D]"));
    return Packed{x[0], x[1], x[3], x[4], round16(x[1])};
  }
  int64_t qkv_offset(int64_t b, int64_t h) const { return b * N * 3 * H * D + h * D; }
  int64_t out_offset(int64_t b, int64_t h) const { return (b * N * H + h) * D; }
};

ffi::Error PackedForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::ResultBuffer<ffi::F32> out,
                         ffi::ResultBuffer<ffi::F32> probs) {
  auto dims = Packed::From(qkv);
  if (dims.has_error()) return dims.error();
  const Packed d = dims.value();
  if (auto e = CheckHeadDim(d.D); e.failure()) return e;
  const float* X = qkv.typed_data();
  float *O = out->typed_data(), *P = probs->typed_data();
  const int64_t hd = d.H * d.D, xs = 3 * hd;
  mim_jax::parallel_for(pool, d.B * d.H, d.D * d.S16, [=](int64_t bh, float* kt) {
    const int64_t b = bh / d.H, h = bh % d.H;
    const float* x = X + d.qkv_offset(b, h);
    forward_pair(x, xs, x + hd, x + 2 * hd, xs, O + d.out_offset(b, h), hd, P + bh * d.N * d.S16, d.N, d.N, d.D,
                 d.S16, kt);
  });
  return ffi::Error::Success();
}

ffi::Error PackedBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> probs,
                          ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dqkv) {
  auto dims = Packed::From(qkv);
  if (dims.has_error()) return dims.error();
  const Packed d = dims.value();
  if (auto e = CheckHeadDim(d.D); e.failure()) return e;
  const float *X = qkv.typed_data(), *P = probs.typed_data(), *G = dout.typed_data();
  float* dX = dqkv->typed_data();
  const int64_t hd = d.H * d.D, xs = 3 * hd;
  mim_jax::parallel_for(pool, d.B * d.H, (d.D + d.N) * d.S16, [=](int64_t bh, float* scratch) {
    const int64_t b = bh / d.H, h = bh % d.H, xo = d.qkv_offset(b, h);
    const float* x = X + xo;
    float* dx = dX + xo;
    backward_pair(x, xs, x + hd, x + 2 * hd, xs, P + bh * d.N * d.S16, G + d.out_offset(b, h), hd, dx, xs, dx + hd,
                  dx + 2 * hd, xs, d.N, d.N, d.D, d.S16, scratch);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MimJaxAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MimJaxAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MimJaxAttentionPackedForward, PackedForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MimJaxAttentionPackedBackward, PackedBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
