// LayerNorm over the last axis for XLA:CPU (float32), forward and backward, called through the XLA FFI.
//
// Why: XLA:CPU spends 10% of a ViT-Tiny MAE step in LayerNorm (docs/performance.md): the statistics, the
// normalization and the three gradient reductions are separate passes over [tokens, width]. Here each row is
// read once forward (two-pass variance, in registers and L1) and once backward; the scale/bias gradients are
// summed per block of rows and then over blocks.
//
// x, y, dy, dx: [M, D]; scale, bias, dscale, dbias: [D]; mean, rstd: [M] (saved for the backward pass).
// Rows run in blocks on XLA's own intra-op thread pool (cpu_parallel.h).

#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRowsPerBlock = 64;

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                   ffi::Buffer<ffi::F32> bias, float epsilon, ffi::ResultBuffer<ffi::F32> y,
                   ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> rstd) {
  auto dims = x.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("layernorm_cpu: x must be [M, D]");
  const int64_t M = dims[0], D = dims[1], blocks = (M + kRowsPerBlock - 1) / kRowsPerBlock;
  const float *X = x.typed_data(), *G = scale.typed_data(), *Bi = bias.typed_data();
  float *Y = y->typed_data(), *Mu = mean->typed_data(), *R = rstd->typed_data();
  mim_jax::parallel_for(pool, blocks, 0, [=](int64_t block, float*) {
    for (int64_t m = block * kRowsPerBlock; m < std::min(M, (block + 1) * kRowsPerBlock); ++m) {
      const float* xr = X + m * D;
      float* yr = Y + m * D;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t d = 0; d < D; ++d) sum += xr[d];
      const float mu = sum / D;
      float var = 0.0f;
#pragma omp simd reduction(+ : var)
      for (int64_t d = 0; d < D; ++d) var += (xr[d] - mu) * (xr[d] - mu);
      const float r = 1.0f / std::sqrt(var / D + epsilon);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) yr[d] = (xr[d] - mu) * r * G[d] + Bi[d];
      Mu[m] = mu;
      R[m] = r;
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                    ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> rstd, ffi::Buffer<ffi::F32> dy,
                    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                    ffi::ResultBuffer<ffi::F32> dbias) {
  auto dims = x.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("layernorm_cpu: x must be [M, D]");
  const int64_t M = dims[0], D = dims[1], blocks = (M + kRowsPerBlock - 1) / kRowsPerBlock;
  const float *X = x.typed_data(), *G = scale.typed_data(), *Mu = mean.typed_data(), *R = rstd.typed_data(),
              *DY = dy.typed_data();
  float *DX = dx->typed_data(), *DG = dscale->typed_data(), *DB = dbias->typed_data();
  std::vector<float> partial(blocks * 2 * D);  // per block: dscale then dbias
  float* P = partial.data();
  mim_jax::parallel_for(pool, blocks, 0, [=](int64_t block, float*) {
    float* pg = P + block * 2 * D;
    float* pb = pg + D;
    for (int64_t d = 0; d < D; ++d) pg[d] = pb[d] = 0.0f;
    for (int64_t m = block * kRowsPerBlock; m < std::min(M, (block + 1) * kRowsPerBlock); ++m) {
      const float *xr = X + m * D, *gr = DY + m * D;
      float* dxr = DX + m * D;
      const float mu = Mu[m], r = R[m];
      float c1 = 0.0f, c2 = 0.0f;  // mean(dy * scale), mean(dy * scale * xhat)
#pragma omp simd reduction(+ : c1, c2)
      for (int64_t d = 0; d < D; ++d) {
        const float xhat = (xr[d] - mu) * r, gs = gr[d] * G[d];
        c1 += gs;
        c2 += gs * xhat;
        pg[d] += gr[d] * xhat;
        pb[d] += gr[d];
      }
      c1 /= D;
      c2 /= D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) dxr[d] = r * (gr[d] * G[d] - c1 - (xr[d] - mu) * r * c2);
    }
  });
  for (int64_t d = 0; d < D; ++d) DG[d] = DB[d] = 0.0f;
  for (int64_t block = 0; block < blocks; ++block)
    for (int64_t d = 0; d < D; ++d) {
      DG[d] += P[block * 2 * D + d];
      DB[d] += P[block * 2 * D + D + d];
    }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MimJaxLayerNormForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MimJaxLayerNormBackward, Backward,
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
