// A training convolution for outputs of a few pixels, loaded as a Paddle custom op by core/cpu_ops.py (conv2d, which
// sends it outputs of at most 2x2 pixels): channels-last float32 activations, OIHW weights, no bias, groups and
// dilation 1, as Paddle's conv2d computes it.
//
// oneDNN is slow at such outputs, a ResNet's last stage at 64 px: on AVX2 the weight gradient of a padded 3x3
// convolution of a 2x2 image falls back to a per-image im2col and GEMM, 30-40 ms a call for 0.3 GFLOP
// (docs/benchmarks.md, "The suite's own CPU kernels"). Here the batch is unrolled once (im2col: a row per output
// pixel, a column per input channel and kernel tap) and the forward pass and both gradients are each one matrix
// product over the whole batch, on oneDNN's own sgemm (the library inside Paddle's wheel, its ISA picked at run time):
//   forward        out[NP, O]   = cols[NP, CT] . W[O, CT]^T
//   input grad     dcols[NP, CT] = dout[NP, O] . W[O, CT]     then summed back into the image (col2im)
//   weights grad   dW[O, CT]    = dout[NP, O]^T . cols[NP, CT]
// where N is the batch, P the output pixels, O the output channels, C the input channels and T the kernel taps;
// OIHW weights are W[O, CT] as they lie. Padding taps are zero columns: at a 2x2 output of a 3x3 kernel over half
// the products are with zeros, and the last stage of ResNet18 still took a quarter of the time it took on oneDNN.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "paddle/extension.h"

// oneDNN's row-major sgemm, C = alpha op(A) op(B) + beta C (oneapi/dnnl/dnnl.h, stable across oneDNN 3.x; returns 0
// on success).
extern "C" int dnnl_sgemm(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

namespace {

// The output size along one axis; an unknown input size (-1) stays unknown.
int64_t OutputSize(int64_t in, int64_t kernel, int stride, int padding) {
  return in < 0 ? in : (in + 2 * padding - kernel) / stride + 1;
}

// The geometry of one convolution: NHWC input [n, h, w, c], OIHW weights [o, c, kh, kw], NHWC output [n, oh, ow, o].
struct Geometry {
  int64_t n, h, w, c, o, kh, kw, oh, ow, stride_h, stride_w, pad_h, pad_w;

  Geometry(const std::vector<int64_t>& x, const std::vector<int64_t>& weights, const std::vector<int>& strides,
           const std::vector<int>& paddings)
      : n(x[0]), h(x[1]), w(x[2]), c(x[3]), o(weights[0]), kh(weights[2]), kw(weights[3]),
        oh(OutputSize(x[1], weights[2], strides[0], paddings[0])),
        ow(OutputSize(x[2], weights[3], strides[1], paddings[1])), stride_h(strides[0]), stride_w(strides[1]),
        pad_h(paddings[0]), pad_w(paddings[1]) {}

  int64_t Rows() const { return n * oh * ow; }
  int64_t Taps() const { return kh * kw; }
  int64_t Columns() const { return c * Taps(); }
  // A 1x1 convolution of stride 1 without padding: the input is its own unrolled matrix.
  bool Unrolled() const { return Taps() == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0; }

  // The input pixel under tap (ky, kx) of output pixel (oy, ox), or -1 in the padding.
  int64_t InputPixel(int64_t oy, int64_t ox, int64_t ky, int64_t kx) const {
    const int64_t iy = oy * stride_h - pad_h + ky, ix = ox * stride_w - pad_w + kx;
    return (iy < 0 || iy >= h || ix < 0 || ix >= w) ? -1 : iy * w + ix;
  }
};

void Gemm(char transa, char transb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, float* c, int64_t ldc) {
  PD_CHECK(dnnl_sgemm(transa, transb, m, n, k, 1.f, a, lda, b, ldb, 0.f, c, ldc) == 0,
           "conv2d_training: oneDNN's sgemm failed");
}

// cols[row, ch * T + t] = x at tap t of the row's output pixel, channel ch (0 in the padding); none where the input
// is already that matrix.
std::unique_ptr<float[]> Unroll(const Geometry& g, const float* x) {
  if (g.Unrolled()) return nullptr;
  std::unique_ptr<float[]> cols(new float[g.Rows() * g.Columns()]);  // every element is written below
  const int64_t taps = g.Taps(), pixels = g.oh * g.ow;
#pragma omp parallel for
  for (int64_t row = 0; row < g.Rows(); ++row) {
    const int64_t image = row / pixels, oy = row % pixels / g.ow, ox = row % g.ow;
    float* out = cols.get() + row * g.Columns();
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t pixel = g.InputPixel(oy, ox, t / g.kw, t % g.kw);
      if (pixel < 0) {
        for (int64_t ch = 0; ch < g.c; ++ch) out[ch * taps + t] = 0.f;
        continue;
      }
      const float* in = x + (image * g.h * g.w + pixel) * g.c;
      for (int64_t ch = 0; ch < g.c; ++ch) out[ch * taps + t] = in[ch];
    }
  }
  return cols;
}

// dx = the sum, over every output pixel and tap that read an input pixel, of that column of dcols. Images are
// shared out over threads, so no two threads add into the same pixel.
void Roll(const Geometry& g, const float* dcols, float* dx) {
  const int64_t taps = g.Taps(), pixels = g.oh * g.ow, image_size = g.h * g.w * g.c;
#pragma omp parallel for
  for (int64_t image = 0; image < g.n; ++image) {
    float* out = dx + image * image_size;
    std::memset(out, 0, image_size * sizeof(float));
    for (int64_t p = 0; p < pixels; ++p) {
      const float* in = dcols + (image * pixels + p) * g.Columns();
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t pixel = g.InputPixel(p / g.ow, p % g.ow, t / g.kw, t % g.kw);
        if (pixel < 0) continue;
        float* target = out + pixel * g.c;
        for (int64_t ch = 0; ch < g.c; ++ch) target[ch] += in[ch * taps + t];
      }
    }
  }
}

void CheckInputs(const paddle::Tensor& x, const paddle::Tensor& weights, const std::vector<int>& strides,
                 const std::vector<int>& paddings) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32 && x.shape().size() == 4,
           "conv2d_training: the input must be a 4-D float32 NHWC tensor on the CPU");
  PD_CHECK(weights.dtype() == paddle::DataType::FLOAT32 && weights.shape().size() == 4 &&
               weights.shape()[1] == x.shape()[3],
           "conv2d_training: the weights must be float32 OIHW with as many input channels as the input");
  PD_CHECK(strides.size() == 2 && paddings.size() == 2 && strides[0] > 0 && strides[1] > 0,
           "conv2d_training: strides and paddings must be [height, width]");
}

}  // namespace

std::vector<paddle::Tensor> ConvolutionForward(const paddle::Tensor& x, const paddle::Tensor& weights,
                                               const std::vector<int>& strides, const std::vector<int>& paddings) {
  CheckInputs(x, weights, strides, paddings);
  const Geometry g(x.shape(), weights.shape(), strides, paddings);
  auto out = paddle::empty({g.n, g.oh, g.ow, g.o}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const std::unique_ptr<float[]> unrolled = Unroll(g, x.data<float>());
  const float* cols = unrolled ? unrolled.get() : x.data<float>();
  Gemm('N', 'T', g.Rows(), g.o, g.Columns(), cols, g.Columns(), weights.data<float>(), g.Columns(), out.data<float>(),
       g.o);
  return {out};
}

std::vector<paddle::Tensor> ConvolutionBackward(const paddle::Tensor& x, const paddle::Tensor& weights,
                                                const paddle::Tensor& out_grad, const std::vector<int>& strides,
                                                const std::vector<int>& paddings) {
  CheckInputs(x, weights, strides, paddings);
  const Geometry g(x.shape(), weights.shape(), strides, paddings);
  auto x_grad = paddle::empty_like(x);
  auto weights_grad = paddle::empty_like(weights);
  const float* dout = out_grad.data<float>();
  const std::unique_ptr<float[]> unrolled = Unroll(g, x.data<float>());
  Gemm('T', 'N', g.o, g.Columns(), g.Rows(), dout, g.o, unrolled ? unrolled.get() : x.data<float>(), g.Columns(),
       weights_grad.data<float>(), g.Columns());
  // The columns' gradient takes the place of the columns, which are no longer needed.
  float* dcols = unrolled ? unrolled.get() : x_grad.data<float>();
  Gemm('N', 'N', g.Rows(), g.Columns(), g.o, dout, g.o, weights.data<float>(), g.Columns(), dcols, g.Columns());
  if (unrolled) Roll(g, dcols, x_grad.data<float>());
  return {x_grad, weights_grad};
}

std::vector<std::vector<int64_t>> ConvolutionShapes(const std::vector<int64_t>& x, const std::vector<int64_t>& weights,
                                                    const std::vector<int>& strides,
                                                    const std::vector<int>& paddings) {
  return {{x[0], OutputSize(x[1], weights[2], strides[0], paddings[0]),
           OutputSize(x[2], weights[3], strides[1], paddings[1]), weights[0]}};
}

std::vector<paddle::DataType> ConvolutionDtypes(const paddle::DataType& x, const paddle::DataType& weights) {
  return {x};
}

std::vector<std::vector<int64_t>> ConvolutionGradientShapes(const std::vector<int64_t>& x,
                                                            const std::vector<int64_t>& weights,
                                                            const std::vector<int64_t>& out_grad) {
  return {x, weights};
}

PD_BUILD_OP(conv2d_training)
    .Inputs({"X", "Weights"})
    .Outputs({"Out"})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>"})
    .SetKernelFn(PD_KERNEL(ConvolutionForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConvolutionShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(ConvolutionDtypes));

PD_BUILD_GRAD_OP(conv2d_training)
    .Inputs({"X", "Weights", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weights")})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>"})
    .SetKernelFn(PD_KERNEL(ConvolutionBackward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConvolutionGradientShapes));
