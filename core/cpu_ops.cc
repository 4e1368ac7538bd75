// The suite's own CPU kernels, loaded as Paddle custom ops by core/cpu_ops.py: training-mode batch norm with an
// optional relu for channels-last activations, and the Momentum update.
//
// Paddle 3.3.1's CPU batch norm, relu and momentum run on one thread; these run on every OpenMP thread
// (OMP_NUM_THREADS), as PyTorch's do, and the relu is fused into the normalisation and its gradient. The mathematics
// is Paddle's: batch_norm (biased batch variance; running = momentum * running + (1 - momentum) * batch, in place)
// followed by relu, and momentum with L2 decay. Sums are accumulated in double, per thread, then added in thread
// order: a run is reproducible for a given thread count. Build flags are in cpu_ops.py (-fno-trapping-math lets the
// relu's comparison vectorise).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "paddle/extension.h"

namespace {

// Hot loops are compiled for AVX-512, AVX2 and the baseline; the loader picks one for the CPU at run time.
#define CPU_OPS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// The rows [first, last) of a thread when `rows` are split evenly over `threads`.
inline void ThreadRows(int64_t rows, int thread, int threads, int64_t* first, int64_t* last) {
  *first = rows * thread / threads;
  *last = rows * (thread + 1) / threads;
}

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

// Runs body(first_row, last_row) on every thread over its share of the rows.
template <typename Body>
void ForRows(int64_t rows, Body body) {
#pragma omp parallel
  {
    int64_t r0, r1;
    ThreadRows(rows, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
    body(r0, r1);
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

void CheckChannelsLast(const paddle::Tensor& x, const paddle::Tensor& scale) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "batch_norm_relu: x must be float32 on the CPU");
  PD_CHECK(!x.shape().empty() && x.shape().back() == scale.numel(),
           "batch_norm_relu: the last axis of x (channels-last) must match the scale's size");
}

}  // namespace

std::vector<paddle::Tensor> BatchNormReluForward(const paddle::Tensor& x, const paddle::Tensor& scale,
                                                 const paddle::Tensor& bias, const paddle::Tensor& mean,
                                                 const paddle::Tensor& variance, float momentum, float epsilon,
                                                 bool relu) {
  CheckChannelsLast(x, scale);
  const int64_t channels = scale.numel();
  const int64_t rows = x.numel() / channels;
  const float* xp = x.data<float>();
  std::vector<double> sum, sum_of_squares;
  ChannelSums(rows, channels, [&](int64_t r0, int64_t r1, double* s, double* q) {
    AddChannelSums(xp, r0, r1, channels, s, q);
  }, &sum, &sum_of_squares);

  auto saved_mean = paddle::empty({channels}, paddle::DataType::FLOAT32, x.place());
  auto saved_inv_std = paddle::empty({channels}, paddle::DataType::FLOAT32, x.place());
  float* running_mean = const_cast<float*>(mean.data<float>());  // updated in place (the op's inplace map)
  float* running_variance = const_cast<float*>(variance.data<float>());
  for (int64_t c = 0; c < channels; ++c) {
    const double m = sum[c] / rows;
    const double v = std::max(sum_of_squares[c] / rows - m * m, 0.0);
    saved_mean.data<float>()[c] = static_cast<float>(m);
    saved_inv_std.data<float>()[c] = static_cast<float>(1.0 / std::sqrt(v + epsilon));
    running_mean[c] = running_mean[c] * momentum + static_cast<float>(m) * (1 - momentum);
    running_variance[c] = running_variance[c] * momentum + static_cast<float>(v) * (1 - momentum);
  }
  std::vector<float> a, b;
  AffineForm(scale, bias, saved_mean, saved_inv_std, &a, &b);
  auto y = paddle::empty_like(x);
  float* yp = y.data<float>();
  ForRows(rows, [&](int64_t r0, int64_t r1) { Normalise(xp, r0, r1, channels, a.data(), b.data(), relu, yp); });
  return {y, saved_mean, saved_inv_std};  // MeanOut and VarianceOut are Mean and Variance (the inplace map)
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

  auto dscale = paddle::empty({channels}, paddle::DataType::FLOAT32, x.place());
  auto dbias = paddle::empty({channels}, paddle::DataType::FLOAT32, x.place());
  std::vector<float> mean_g(channels), k_centred(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const double inv_std = saved_inv_std.data<float>()[c];
    dbias.data<float>()[c] = static_cast<float>(sum_dy[c]);
    dscale.data<float>()[c] = static_cast<float>(sum_dy_centred[c] * inv_std);
    mean_g[c] = static_cast<float>(sum_dy[c] / rows);
    k_centred[c] = static_cast<float>(inv_std * inv_std * sum_dy_centred[c] / rows);
  }
  auto dx = paddle::empty_like(x);
  float* dxp = dx.data<float>();
  ForRows(rows, [&](int64_t r0, int64_t r1) {
    InputGradient(xp, gp, r0, r1, channels, a.data(), b.data(), mean, relu, mean_g.data(), k_centred.data(), dxp);
  });
  return {dx, dscale, dbias};
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

// Momentum with L2 decay, as Paddle's momentum op computes it: g = rescale * grad + decay * param,
// velocity = mu * velocity + g, param -= lr * velocity; in place.
namespace {

CPU_OPS_CLONES void MomentumUpdate(int64_t first, int64_t last, const float* grad, float mu, float decay,
                                   float rescale, float lr, float* param, float* velocity) {
#pragma omp simd
  for (int64_t i = first; i < last; ++i) {
    const float g = rescale * grad[i] + decay * param[i];
    velocity[i] = velocity[i] * mu + g;
    param[i] -= lr * velocity[i];
  }
}

}  // namespace

std::vector<paddle::Tensor> MomentumForward(const paddle::Tensor& param, const paddle::Tensor& grad,
                                            const paddle::Tensor& velocity, const paddle::Tensor& learning_rate,
                                            float mu, float l2_decay, float rescale_grad) {
  PD_CHECK(param.is_cpu() && param.dtype() == paddle::DataType::FLOAT32, "momentum: param must be float32 on the CPU");
  PD_CHECK(grad.numel() == param.numel() && velocity.numel() == param.numel(),
           "momentum: param, grad and velocity must have the same size");
  const int64_t n = param.numel();
  float* p = const_cast<float*>(param.data<float>());  // updated in place (the op's inplace map)
  float* v = const_cast<float*>(velocity.data<float>());
  const float* g = grad.data<float>();
  const float lr = learning_rate.data<float>()[0];
  ForRows(n, [&](int64_t first, int64_t last) {
    MomentumUpdate(first, last, g, mu, l2_decay, rescale_grad, lr, p, v);
  });
  return {};
}

std::vector<std::vector<int64_t>> MomentumShapes(const std::vector<int64_t>& param, const std::vector<int64_t>& grad,
                                                 const std::vector<int64_t>& velocity,
                                                 const std::vector<int64_t>& learning_rate) {
  return {param, velocity};
}

std::vector<paddle::DataType> MomentumDtypes(const paddle::DataType& param, const paddle::DataType& grad,
                                             const paddle::DataType& velocity,
                                             const paddle::DataType& learning_rate) {
  return {param, velocity};
}

PD_BUILD_OP(momentum_update)
    .Inputs({"Param", "Grad", "Velocity", "LearningRate"})
    .Outputs({"ParamOut", "VelocityOut"})
    .Attrs({"mu: float", "l2_decay: float", "rescale_grad: float"})
    .SetInplaceMap({{"Param", "ParamOut"}, {"Velocity", "VelocityOut"}})
    .SetKernelFn(PD_KERNEL(MomentumForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MomentumShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(MomentumDtypes));
