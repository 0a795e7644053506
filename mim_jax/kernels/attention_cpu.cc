// Fused softmax attention for XLA:CPU (float32), forward and backward, called through the XLA FFI.
//
// Why: XLA:CPU runs attention as separate batched dots, transposes, and softmax fusions over [B, H, T, S]
// logits. At ViT sizes (T, S = 17..197, head dim 32..64) that costs 2-3x more than the arithmetic needs
// (docs/performance.md). Here one (batch, head) pair is one task: its keys are transposed once into a
// zero-padded [D, S16] tile, and every product is a register-blocked 4 x 64 micro-kernel on 16-wide vectors.
//
// Layout: q [B, T, H, D], k and v [B, S, H, D], out [B, T, H, D] (the models' token-major layout, so no
// transposes outside); probs [B, H, T, S16] is the saved softmax (S16 = S rounded up to 16, zero-padded), the
// residual of the backward pass. D must be a multiple of 16. Pairs run in parallel with OpenMP.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));  // GCC vector extension: AVX-512 or 2 x AVX2 registers
inline v16 load(const float* p) { v16 r; std::memcpy(&r, p, sizeof r); return r; }
inline void store(float* p, v16 x) { std::memcpy(p, &x, sizeof x); }

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

struct Dims {
  int64_t B, T, S, H, D, S16, rs;
};

ffi::Error GetDims(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k, Dims& dims) {
  auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || qd[0] != kd[0] || qd[2] != kd[2] || qd[3] != kd[3])
    return ffi::Error::InvalidArgument("attention_cpu: q must be [B, T, H, D] and k, v [B, S, H, D]");
  if (qd[3] % 16 != 0) return ffi::Error::InvalidArgument("attention_cpu: head dim must be a multiple of 16");
  dims = Dims{qd[0], qd[1], kd[1], qd[2], qd[3], round16(kd[1]), qd[2] * qd[3]};
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> probs) {
  Dims dims;
  if (ffi::Error error = GetDims(q, k, dims); error.failure()) return error;
  const auto [B, T, S, H, D, S16, rs] = dims;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float *Q = q.typed_data(), *K = k.typed_data(), *V = v.typed_data();
  float *O = out->typed_data(), *P = probs->typed_data();
#pragma omp parallel
  {
    std::vector<float> kt(D * S16, 0.0f);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const int64_t qo = (b * T * H + h) * D, ko = (b * S * H + h) * D;
      float* p = P + bh * T * S16;
      transpose_into(K + ko, S, D, rs, kt.data(), S16);
      gemm(T, S16, D, Q + qo, rs, 1, kt.data(), S16, p, S16, scale);  // logits
      for (int64_t t = 0; t < T; ++t) {  // softmax over the S real keys; padding probabilities are 0
        float* row = p + t * S16;
        const float m = *std::max_element(row, row + S);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)  // with glibc's vector expf (libmvec)
        for (int64_t s = 0; s < S; ++s) {
          row[s] = std::exp(row[s] - m);
          sum += row[s];
        }
        const float inv = 1.0f / sum;
        for (int64_t s = 0; s < S; ++s) row[s] *= inv;
        std::fill(row + S, row + S16, 0.0f);
      }
      gemm(T, D, S, p, S16, 1, V + ko, rs, O + qo, rs, 1.0f);  // out = P V
    }
  }
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::F32> probs, ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv) {
  Dims dims;
  if (ffi::Error error = GetDims(q, k, dims); error.failure()) return error;
  const auto [B, T, S, H, D, S16, rs] = dims;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float *Q = q.typed_data(), *K = k.typed_data(), *V = v.typed_data(), *P = probs.typed_data(),
              *G = dout.typed_data();
  float *dQ = dq->typed_data(), *dK = dk->typed_data(), *dV = dv->typed_data();
#pragma omp parallel
  {
    std::vector<float> vt(D * S16, 0.0f), ds(T * S16);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const int64_t qo = (b * T * H + h) * D, ko = (b * S * H + h) * D;
      const float* p = P + bh * T * S16;
      transpose_into(V + ko, S, D, rs, vt.data(), S16);
      gemm(T, S16, D, G + qo, rs, 1, vt.data(), S16, ds.data(), S16, 1.0f);  // dP = dO V^T
      for (int64_t t = 0; t < T; ++t) {  // dLogits = P * (dP - rowsum(P * dP)), times the scale
        const float* pr = p + t * S16;
        float* dr = ds.data() + t * S16;
        float dot = 0.0f;
        for (int64_t s = 0; s < S16; ++s) dot += pr[s] * dr[s];
        for (int64_t s = 0; s < S16; ++s) dr[s] = pr[s] * (dr[s] - dot) * scale;
      }
      gemm(T, D, S, ds.data(), S16, 1, K + ko, rs, dQ + qo, rs, 1.0f);  // dQ = dLogits K
      gemm(S, D, T, ds.data(), 1, S16, Q + qo, rs, dK + ko, rs, 1.0f);  // dK = dLogits^T Q
      gemm(S, D, T, p, 1, S16, G + qo, rs, dV + ko, rs, 1.0f);          // dV = P^T dO
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MimJaxAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MimJaxAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
