// Training-mode batch norm for channels-last activations, loaded as Paddle custom ops by core/cpu_ops.py: with an
// optional relu (batch_norm_relu), or ending a residual block, relu(batch_norm(x) + shortcut) (batch_norm_add_relu).
//
// Paddle 3.3.1's CPU batch norm, relu and addition run on one thread; these run on every OpenMP thread
// (OMP_NUM_THREADS), as PyTorch's do, and the relu (and the addition) are fused into the normalisation and its
// gradient. The mathematics is Paddle's: batch_norm (biased batch variance; running = momentum * running +
// (1 - momentum) * batch, in place), then the addition and relu. Sums are accumulated in double, per thread, then
// added in thread order: a run is reproducible for a given thread count. Build flags are in cpu_ops.py
// (-fno-trapping-math lets the relu's comparison vectorise).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "paddle/extension.h"

namespace {

using cpu_ops::ForRows;
using cpu_ops::ThreadRows;

CPU_OPS_CLONES void AddChannelSums(const float* x, int64_t first, int64_t last, int64_t channels, double* sum,
                                   double* sum_of_squares) {
  for (int64_t r = first; r < last; ++r) {
    const float* row = x + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const double v = row[c];
      sum[c] += v;
      sum_of_squares[c] += v * v;
    }
  }
}

// y = x * a + b per channel, then relu if asked.
CPU_OPS_CLONES void Normalise(const float* x, int64_t first, int64_t last, int64_t channels, const float* a,
                              const float* b, bool relu, float* y) {
  for (int64_t r = first; r < last; ++r) {
    const float* xr = x + r * channels;
    float* yr = y + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float v = xr[c] * a[c] + b[c];
      yr[c] = relu ? (v > 0.f ? v : 0.f) : v;
    }
  }
}

// y = relu(x * a + b + residual) per channel: a residual block's last batch norm and its join in one pass.
CPU_OPS_CLONES void NormaliseAddRelu(const float* x, const float* residual, int64_t first, int64_t last,
                                     int64_t channels, const float* a, const float* b, float* y) {
  for (int64_t r = first; r < last; ++r) {
    const float* xr = x + r * channels;
    const float* sr = residual + r * channels;
    float* yr = y + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float v = xr[c] * a[c] + b[c] + sr[c];
      yr[c] = v > 0.f ? v : 0.f;
    }
  }
}

// The gradient that reaches the normalisation: dy where the relu passed its input (recomputed from x), else 0. A
// select, which the loops vectorise with -fno-trapping-math.
inline float PassedGradient(float dy, float x, float a, float b, bool relu) {
  return (!relu || x * a + b > 0.f) ? dy : 0.f;
}

CPU_OPS_CLONES void AddGradientSums(const float* x, const float* dy, int64_t first, int64_t last, int64_t channels,
                                    const float* a, const float* b, const float* mean, bool relu, double* sum_dy,
                                    double* sum_dy_centred) {
  for (int64_t r = first; r < last; ++r) {
    const float* xr = x + r * channels;
    const float* gr = dy + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float g = PassedGradient(gr[c], xr[c], a[c], b[c], relu);
      sum_dy[c] += g;
      sum_dy_centred[c] += static_cast<double>(g) * (xr[c] - mean[c]);
    }
  }
}

// As AddGradientSums, for relu(bn(x) + residual): the relu passed dy where its output y is positive. That gradient
// is the residual's (the addition passes it on unchanged), so it is written out, and read back by InputGradient.
CPU_OPS_CLONES void AddResidualGradientSums(const float* x, const float* y, const float* dy, int64_t first,
                                            int64_t last, int64_t channels, const float* mean, double* sum_dy,
                                            double* sum_dy_centred, float* d_residual) {
  for (int64_t r = first; r < last; ++r) {
    const float* xr = x + r * channels;
    const float* yr = y + r * channels;
    const float* gr = dy + r * channels;
    float* dr = d_residual + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float g = yr[c] > 0.f ? gr[c] : 0.f;
      dr[c] = g;
      sum_dy[c] += g;
      sum_dy_centred[c] += static_cast<double>(g) * (xr[c] - mean[c]);
    }
  }
}

// dx = a * (g - mean of g - (x - mean) * k_centred), the batch-norm input gradient with the per-channel constants
// folded in (a = scale / std, as in the forward pass).
CPU_OPS_CLONES void InputGradient(const float* x, const float* dy, int64_t first, int64_t last, int64_t channels,
                                  const float* a, const float* b, const float* mean, bool relu, const float* mean_g,
                                  const float* k_centred, float* dx) {
  for (int64_t r = first; r < last; ++r) {
    const float* xr = x + r * channels;
    const float* gr = dy + r * channels;
    float* dr = dx + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float g = PassedGradient(gr[c], xr[c], a[c], b[c], relu);
      dr[c] = a[c] * (g - mean_g[c] - (xr[c] - mean[c]) * k_centred[c]);
    }
  }
}

// Per-channel sums of two quantities over all rows: each thread sums its rows, the partial sums are added in
// thread order.
template <typename SumRows>
void ChannelSums(int64_t rows, int64_t channels, SumRows sum_rows, std::vector<double>* first,
                 std::vector<double>* second) {
  const int threads = omp_get_max_threads();
  std::vector<double> partial(2 * channels * threads, 0.0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    int64_t r0, r1;
    ThreadRows(rows, t, omp_get_num_threads(), &r0, &r1);
    sum_rows(r0, r1, &partial[2 * channels * t], &partial[2 * channels * t + channels]);
  }
  first->assign(channels, 0.0);
  second->assign(channels, 0.0);
  for (int t = 0; t < threads; ++t) {
    for (int64_t c = 0; c < channels; ++c) {
      (*first)[c] += partial[2 * channels * t + c];
      (*second)[c] += partial[2 * channels * t + channels + c];
    }
  }
}

// a = scale / sqrt(var + eps) and b = bias - mean * a, the affine form of the normalisation, from saved statistics.
void AffineForm(const paddle::Tensor& scale, const paddle::Tensor& bias, const paddle::Tensor& mean,
                const paddle::Tensor& inv_std, std::vector<float>* a, std::vector<float>* b) {
  const int64_t channels = scale.numel();
  a->resize(channels);
  b->resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    (*a)[c] = scale.data<float>()[c] * inv_std.data<float>()[c];
    (*b)[c] = bias.data<float>()[c] - mean.data<float>()[c] * (*a)[c];
  }
}

// `op`: the op's name, for its error messages.
void CheckChannelsLast(const char* op, const paddle::Tensor& x, const paddle::Tensor& scale) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, op, ": x must be float32 on the CPU");
  PD_CHECK(!x.shape().empty() && x.shape().back() == scale.numel(), op,
           ": the last axis of x (channels-last) must match the scale's size");
}

// The forward pass's per-channel results: the batch statistics the gradient needs, and the normalisation's affine
// form.
struct Normalisation {
  paddle::Tensor saved_mean, saved_inv_std;
  std::vector<float> a, b;
};

// The batch statistics of channels-last x, with the running statistics updated in place; `op` names the caller.
Normalisation BatchStatistics(const char* op, const paddle::Tensor& x, const paddle::Tensor& scale,
                              const paddle::Tensor& bias, const paddle::Tensor& mean, const paddle::Tensor& variance,
                              float momentum, float epsilon) {
  CheckChannelsLast(op, x, scale);
  const int64_t channels = scale.numel();
  const int64_t rows = x.numel() / channels;
  const float* xp = x.data<float>();
  std::vector<double> sum, sum_of_squares;
  ChannelSums(rows, channels, [&](int64_t r0, int64_t r1, double* s, double* q) {
    AddChannelSums(xp, r0, r1, channels, s, q);
  }, &sum, &sum_of_squares);

  Normalisation n{paddle::empty({channels}, paddle::DataType::FLOAT32, x.place()),
                  paddle::empty({channels}, paddle::DataType::FLOAT32, x.place()), {}, {}};
  float* running_mean = const_cast<float*>(mean.data<float>());  // updated in place (the ops' inplace maps)
  float* running_variance = const_cast<float*>(variance.data<float>());
  for (int64_t c = 0; c < channels; ++c) {
    const double m = sum[c] / rows;
    const double v = std::max(sum_of_squares[c] / rows - m * m, 0.0);
    n.saved_mean.data<float>()[c] = static_cast<float>(m);
    n.saved_inv_std.data<float>()[c] = static_cast<float>(1.0 / std::sqrt(v + epsilon));
    running_mean[c] = running_mean[c] * momentum + static_cast<float>(m) * (1 - momentum);
    running_variance[c] = running_variance[c] * momentum + static_cast<float>(v) * (1 - momentum);
  }
  AffineForm(scale, bias, n.saved_mean, n.saved_inv_std, &n.a, &n.b);
  return n;
}

// The backward pass's per-channel results, from the sums of the gradient g that reaches the normalisation and of
// g * (x - mean): the scale's and bias's gradients, and InputGradient's constants.
struct NormalisationGradient {
  paddle::Tensor dscale, dbias;
  std::vector<float> mean_g, k_centred;
};

NormalisationGradient FromGradientSums(const std::vector<double>& sum_dy, const std::vector<double>& sum_dy_centred,
                                       const paddle::Tensor& saved_inv_std, int64_t rows) {
  const int64_t channels = saved_inv_std.numel();
  NormalisationGradient n{paddle::empty({channels}, paddle::DataType::FLOAT32, saved_inv_std.place()),
                          paddle::empty({channels}, paddle::DataType::FLOAT32, saved_inv_std.place()),
                          std::vector<float>(channels), std::vector<float>(channels)};
  for (int64_t c = 0; c < channels; ++c) {
    const double inv_std = saved_inv_std.data<float>()[c];
    n.dbias.data<float>()[c] = static_cast<float>(sum_dy[c]);
    n.dscale.data<float>()[c] = static_cast<float>(sum_dy_centred[c] * inv_std);
    n.mean_g[c] = static_cast<float>(sum_dy[c] / rows);
    n.k_centred[c] = static_cast<float>(inv_std * inv_std * sum_dy_centred[c] / rows);
  }
  return n;
}

}  // namespace

std::vector<paddle::Tensor> BatchNormReluForward(const paddle::Tensor& x, const paddle::Tensor& scale,
                                                 const paddle::Tensor& bias, const paddle::Tensor& mean,
                                                 const paddle::Tensor& variance, float momentum, float epsilon,
                                                 bool relu) {
  const Normalisation n = BatchStatistics("batch_norm_relu", x, scale, bias, mean, variance, momentum, epsilon);
  const int64_t channels = scale.numel();
  const float* xp = x.data<float>();
  auto y = paddle::empty_like(x);
  float* yp = y.data<float>();
  ForRows(x.numel() / channels, [&](int64_t r0, int64_t r1) {
    Normalise(xp, r0, r1, channels, n.a.data(), n.b.data(), relu, yp);
  });
  return {y, n.saved_mean, n.saved_inv_std};  // MeanOut and VarianceOut are Mean and Variance (the inplace map)
}

std::vector<paddle::Tensor> BatchNormReluBackward(const paddle::Tensor& x, const paddle::Tensor& scale,
                                                  const paddle::Tensor& bias, const paddle::Tensor& saved_mean,
                                                  const paddle::Tensor& saved_inv_std, const paddle::Tensor& dy,
                                                  bool relu) {
  const int64_t channels = scale.numel();
  const int64_t rows = x.numel() / channels;
  const float* xp = x.data<float>();
  const float* gp = dy.data<float>();
  const float* mean = saved_mean.data<float>();
  std::vector<float> a, b;
  AffineForm(scale, bias, saved_mean, saved_inv_std, &a, &b);
  std::vector<double> sum_dy, sum_dy_centred;
  ChannelSums(rows, channels, [&](int64_t r0, int64_t r1, double* s, double* q) {
    AddGradientSums(xp, gp, r0, r1, channels, a.data(), b.data(), mean, relu, s, q);
  }, &sum_dy, &sum_dy_centred);
  const NormalisationGradient n = FromGradientSums(sum_dy, sum_dy_centred, saved_inv_std, rows);
  auto dx = paddle::empty_like(x);
  float* dxp = dx.data<float>();
  ForRows(rows, [&](int64_t r0, int64_t r1) {
    InputGradient(xp, gp, r0, r1, channels, a.data(), b.data(), mean, relu, n.mean_g.data(), n.k_centred.data(),
                  dxp);
  });
  return {dx, n.dscale, n.dbias};
}

std::vector<std::vector<int64_t>> BatchNormReluShapes(const std::vector<int64_t>& x, const std::vector<int64_t>& scale,
                                                      const std::vector<int64_t>& bias,
                                                      const std::vector<int64_t>& mean,
                                                      const std::vector<int64_t>& variance) {
  return {x, scale, scale, mean, variance};
}

std::vector<paddle::DataType> BatchNormReluDtypes(const paddle::DataType& x, const paddle::DataType& scale,
                                                  const paddle::DataType& bias, const paddle::DataType& mean,
                                                  const paddle::DataType& variance) {
  return {x, scale, scale, mean, variance};
}

std::vector<std::vector<int64_t>> BatchNormReluGradientShapes(
    const std::vector<int64_t>& x, const std::vector<int64_t>& scale, const std::vector<int64_t>& bias,
    const std::vector<int64_t>& saved_mean, const std::vector<int64_t>& saved_inv_std,
    const std::vector<int64_t>& dy) {
  return {x, scale, bias};
}

PD_BUILD_OP(batch_norm_relu)
    .Inputs({"X", "Scale", "Bias", "Mean", "Variance"})
    .Outputs({"Y", "SavedMean", "SavedInvStd", "MeanOut", "VarianceOut"})
    .Attrs({"momentum: float", "epsilon: float", "relu: bool"})
    .SetInplaceMap({{"Mean", "MeanOut"}, {"Variance", "VarianceOut"}})
    .SetKernelFn(PD_KERNEL(BatchNormReluForward))
    .SetInferShapeFn(PD_INFER_SHAPE(BatchNormReluShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(BatchNormReluDtypes));

PD_BUILD_GRAD_OP(batch_norm_relu)
    .Inputs({"X", "Scale", "Bias", "SavedMean", "SavedInvStd", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Scale"), paddle::Grad("Bias")})
    .Attrs({"relu: bool"})
    .SetKernelFn(PD_KERNEL(BatchNormReluBackward))
    .SetInferShapeFn(PD_INFER_SHAPE(BatchNormReluGradientShapes));

// relu(batch_norm(x) + residual): the end of a residual block. Paddle's addition, relu and their gradients run on one
// thread, and each is a pass over the block's output; here they are part of the batch norm's passes.
std::vector<paddle::Tensor> BatchNormAddReluForward(const paddle::Tensor& x, const paddle::Tensor& residual,
                                                    const paddle::Tensor& scale, const paddle::Tensor& bias,
                                                    const paddle::Tensor& mean, const paddle::Tensor& variance,
                                                    float momentum, float epsilon) {
  PD_CHECK(residual.shape() == x.shape() && residual.dtype() == x.dtype(),
           "batch_norm_add_relu: the residual must have x's shape and dtype");
  const Normalisation n =
      BatchStatistics("batch_norm_add_relu", x, scale, bias, mean, variance, momentum, epsilon);
  const int64_t channels = scale.numel();
  const float* xp = x.data<float>();
  const float* sp = residual.data<float>();
  auto y = paddle::empty_like(x);
  float* yp = y.data<float>();
  ForRows(x.numel() / channels, [&](int64_t r0, int64_t r1) {
    NormaliseAddRelu(xp, sp, r0, r1, channels, n.a.data(), n.b.data(), yp);
  });
  return {y, n.saved_mean, n.saved_inv_std};
}

std::vector<paddle::Tensor> BatchNormAddReluBackward(const paddle::Tensor& x, const paddle::Tensor& y,
                                                     const paddle::Tensor& scale, const paddle::Tensor& bias,
                                                     const paddle::Tensor& saved_mean,
                                                     const paddle::Tensor& saved_inv_std, const paddle::Tensor& dy) {
  const int64_t channels = scale.numel();
  const int64_t rows = x.numel() / channels;
  const float* xp = x.data<float>();
  const float* mean = saved_mean.data<float>();
  auto d_residual = paddle::empty_like(x);
  float* drp = d_residual.data<float>();
  std::vector<double> sum_dy, sum_dy_centred;
  ChannelSums(rows, channels, [&](int64_t r0, int64_t r1, double* s, double* q) {
    AddResidualGradientSums(xp, y.data<float>(), dy.data<float>(), r0, r1, channels, mean, s, q, drp);
  }, &sum_dy, &sum_dy_centred);
  const NormalisationGradient n = FromGradientSums(sum_dy, sum_dy_centred, saved_inv_std, rows);
  std::vector<float> a, b;
  AffineForm(scale, bias, saved_mean, saved_inv_std, &a, &b);
  auto dx = paddle::empty_like(x);
  float* dxp = dx.data<float>();
  ForRows(rows, [&](int64_t r0, int64_t r1) {  // the relu's mask is already in the residual's gradient
    InputGradient(xp, drp, r0, r1, channels, a.data(), b.data(), mean, false, n.mean_g.data(), n.k_centred.data(),
                  dxp);
  });
  return {dx, d_residual, n.dscale, n.dbias};
}

std::vector<std::vector<int64_t>> BatchNormAddReluShapes(
    const std::vector<int64_t>& x, const std::vector<int64_t>& residual, const std::vector<int64_t>& scale,
    const std::vector<int64_t>& bias, const std::vector<int64_t>& mean, const std::vector<int64_t>& variance) {
  return {x, scale, scale, mean, variance};
}

std::vector<paddle::DataType> BatchNormAddReluDtypes(const paddle::DataType& x, const paddle::DataType& residual,
                                                     const paddle::DataType& scale, const paddle::DataType& bias,
                                                     const paddle::DataType& mean,
                                                     const paddle::DataType& variance) {
  return {x, scale, scale, mean, variance};
}

std::vector<std::vector<int64_t>> BatchNormAddReluGradientShapes(
    const std::vector<int64_t>& x, const std::vector<int64_t>& y, const std::vector<int64_t>& scale,
    const std::vector<int64_t>& bias, const std::vector<int64_t>& saved_mean,
    const std::vector<int64_t>& saved_inv_std, const std::vector<int64_t>& dy) {
  return {x, x, scale, bias};
}

PD_BUILD_OP(batch_norm_add_relu)
    .Inputs({"X", "Residual", "Scale", "Bias", "Mean", "Variance"})
    .Outputs({"Y", "SavedMean", "SavedInvStd", "MeanOut", "VarianceOut"})
    .Attrs({"momentum: float", "epsilon: float"})
    .SetInplaceMap({{"Mean", "MeanOut"}, {"Variance", "VarianceOut"}})
    .SetKernelFn(PD_KERNEL(BatchNormAddReluForward))
    .SetInferShapeFn(PD_INFER_SHAPE(BatchNormAddReluShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(BatchNormAddReluDtypes));

PD_BUILD_GRAD_OP(batch_norm_add_relu)
    .Inputs({"X", "Y", "Scale", "Bias", "SavedMean", "SavedInvStd", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Residual"), paddle::Grad("Scale"), paddle::Grad("Bias")})
    .SetKernelFn(PD_KERNEL(BatchNormAddReluBackward))
    .SetInferShapeFn(PD_INFER_SHAPE(BatchNormAddReluGradientShapes));
