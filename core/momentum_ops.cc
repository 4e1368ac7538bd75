// The Momentum update on every OpenMP thread, loaded as a Paddle custom op by core/cpu_ops.py: Paddle 3.3.1's CPU
// momentum op runs on one thread.
#include <vector>

#include "cpu_ops.h"
#include "paddle/extension.h"

// Momentum with L2 decay, as Paddle's momentum op computes it: g = rescale * grad + decay * param,
// velocity = mu * velocity + g, param -= lr * velocity; in place.
namespace {

using cpu_ops::ForRows;

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
