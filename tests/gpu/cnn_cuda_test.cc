// The CUDA CNN and its kernels against the CPU path: im2col, col2im and both pooling
// kernels against worker/conv_cpu.h (odd sizes, floor pooling), and the CUDA CNN's
// loss, every gradient element and evaluation against the CPU CNN (itself checked by
// finite differences in tests/worker/cnn_test.cc). Every case skips without a CUDA
// device.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "worker/cnn.h"
#include "worker/conv_cpu.h"
#include "worker/cuda/cnn_kernels.h"

namespace gnc {
namespace {

bool HasDevice() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

// DeviceCopy: a device array holding `host`, freed at scope exit.
template <typename T>
class DeviceCopy {
 public:
  explicit DeviceCopy(const std::vector<T>& host) : size_(host.size()) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&data_), std::max<size_t>(size_, 1) * sizeof(T)),
              cudaSuccess);
    if (size_ > 0) {
      EXPECT_EQ(cudaMemcpy(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice),
                cudaSuccess);
    }
  }
  ~DeviceCopy() { cudaFree(data_); }
  T* get() const { return data_; }
  std::vector<T> Host() const {
    std::vector<T> out(size_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(out.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }

 private:
  T* data_ = nullptr;
  size_t size_;
};

std::vector<float> Random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

class CnnKernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasDevice()) GTEST_SKIP() << "no CUDA device: CNN kernels not tested";
  }
};

TEST_F(CnnKernelTest, Im2ColAndCol2ImMatchTheCpu) {
  const int64_t n = 3, h = 11, w = 9, c = 5, k = 5, rows = n * 7 * 5, cols = k * k * c;
  const std::vector<float> x = Random(n * h * w * c, 1), probe = Random(rows * cols, 2);
  std::vector<float> col(rows * cols), back(x.size());
  cpu::Im2Col(x.data(), n, h, w, c, k, col.data());
  cpu::Col2Im(probe.data(), n, h, w, c, k, back.data());
  DeviceCopy<float> dx(x), dcol(std::vector<float>(rows * cols, -7.0f)), dprobe(probe),
      dback(std::vector<float>(x.size(), -7.0f));
  ASSERT_EQ(cuda::LaunchIm2Col(dx.get(), n, h, w, c, k, dcol.get(), nullptr), cudaSuccess);
  ASSERT_EQ(cuda::LaunchCol2Im(dprobe.get(), n, h, w, c, k, dback.get(), nullptr), cudaSuccess);
  EXPECT_EQ(dcol.Host(), col);  // copies: exact
  const std::vector<float> got = dback.Host();
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], back[i], 1e-5f * (1.0f + std::abs(back[i]))) << i;
  }
}

TEST_F(CnnKernelTest, MaxPoolForwardAndBackwardMatchTheCpu) {
  const int64_t n = 2, h = 9, w = 7, c = 3, ph = 4, pw = 3;  // odd: floor drops a row/column
  std::vector<float> x = Random(n * h * w * c, 3);
  x[c] = x[0];  // a tie inside the first window: the first one wins
  const std::vector<float> dy = Random(n * ph * pw * c, 4);
  std::vector<float> y(n * ph * pw * c), dxr(x.size());
  std::vector<int32_t> arg(y.size());
  cpu::MaxPool2Forward(x.data(), n, h, w, c, y.data(), arg.data());
  cpu::MaxPool2Backward(dy.data(), arg.data(), n, h, w, c, dxr.data());
  DeviceCopy<float> dx(x), dout(std::vector<float>(y.size())), ddy(dy),
      dgrad(std::vector<float>(x.size(), -7.0f));
  DeviceCopy<int32_t> darg(std::vector<int32_t>(y.size(), -1));
  ASSERT_EQ(cuda::LaunchMaxPool2Forward(dx.get(), n, h, w, c, dout.get(), darg.get(), nullptr),
            cudaSuccess);
  ASSERT_EQ(cuda::LaunchMaxPool2Backward(ddy.get(), darg.get(), n, h, w, c, dgrad.get(), nullptr),
            cudaSuccess);
  EXPECT_EQ(dout.Host(), y);
  EXPECT_EQ(darg.Host(), arg);
  EXPECT_EQ(dgrad.Host(), dxr);
}

TEST_F(CnnKernelTest, LaunchersRefuseBadSizes) {
  EXPECT_EQ(cuda::LaunchIm2Col(nullptr, 1, 5, 5, 1, 5, nullptr, nullptr), cudaErrorInvalidValue);
  float dummy = 0;
  EXPECT_EQ(cuda::LaunchIm2Col(&dummy, 1, 4, 5, 1, 5, &dummy, nullptr), cudaErrorInvalidValue);
  int32_t arg = 0;
  EXPECT_EQ(cuda::LaunchMaxPool2Forward(&dummy, 1, 1, 4, 1, &dummy, &arg, nullptr),
            cudaErrorInvalidValue);
}

CnnShape OddShape() {
  CnnShape s;
  s.height = 17;
  s.width = 16;
  s.channels = {3, 4};
  s.hidden = {6, 5};
  s.classes = 3;
  return s;
}

struct Problem {
  std::vector<float> params, inputs;
  std::vector<int32_t> labels;
};

Problem MakeProblem(const CnnShape& shape, int64_t batch, uint64_t seed) {
  Problem p;
  p.params = HeInitialParameters(shape.Blocks(), seed);
  const std::vector<float> jitter = Random(p.params.size(), seed + 1);
  for (size_t i = 0; i < p.params.size(); ++i) p.params[i] += 0.05f * jitter[i];
  p.inputs = Random(batch * shape.height * shape.width, seed + 2);
  for (float& v : p.inputs) v = 0.5f + 0.5f * v;
  std::mt19937_64 rng(seed + 3);
  for (int64_t i = 0; i < batch; ++i)
    p.labels.push_back(static_cast<int32_t>(rng() % shape.classes));
  return p;
}

void ExpectCudaMatchesCpu(const CnnShape& shape, int64_t batch, uint64_t seed) {
  absl::StatusOr<std::unique_ptr<Model>> cuda = NewCudaCnn(shape);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  absl::StatusOr<std::unique_ptr<Model>> cpu = NewCpuCnn(shape);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  const Problem p = MakeProblem(shape, batch, seed);
  std::vector<float> g_cuda(p.params.size(), -1.0f), g_cpu(p.params.size());
  absl::StatusOr<double> l_cuda = (*cuda)->LossAndGradient(p.params, p.inputs, p.labels, g_cuda);
  absl::StatusOr<double> l_cpu = (*cpu)->LossAndGradient(p.params, p.inputs, p.labels, g_cpu);
  ASSERT_TRUE(l_cuda.ok()) << l_cuda.status();
  ASSERT_TRUE(l_cpu.ok()) << l_cpu.status();
  EXPECT_NEAR(*l_cuda, *l_cpu, 1e-5 * std::max(1.0, *l_cpu));
  double scale = 0;
  for (float g : g_cpu) scale = std::max(scale, double{std::abs(g)});
  size_t bad = 0, first = 0;
  for (size_t j = 0; j < g_cpu.size(); ++j) {
    if (!(std::abs(g_cuda[j] - g_cpu[j]) <= 1e-4 * scale + 1e-7)) {
      if (bad++ == 0) first = j;
    }
  }
  EXPECT_EQ(bad, 0u) << "first " << first << ": cuda " << g_cuda[first] << ", cpu " << g_cpu[first];
  double loss_cuda = 0, loss_cpu = 0;
  int64_t hits_cuda = -1, hits_cpu = -2;
  ASSERT_TRUE((*cuda)->Evaluate(p.params, p.inputs, p.labels, &loss_cuda, &hits_cuda).ok());
  ASSERT_TRUE((*cpu)->Evaluate(p.params, p.inputs, p.labels, &loss_cpu, &hits_cpu).ok());
  EXPECT_NEAR(loss_cuda, loss_cpu, 1e-5 * loss_cpu);
  EXPECT_NEAR(static_cast<double>(hits_cuda), static_cast<double>(hits_cpu), 0.002 * batch + 1);
}

TEST(CnnCudaTest, OddShapeMatchesTheCpu) {
  if (!HasDevice()) GTEST_SKIP() << "no CUDA device: CUDA CNN not tested";
  ExpectCudaMatchesCpu(OddShape(), 7, 1);
}

TEST(CnnCudaTest, DefaultShapeAcrossCpuChunksAndEvalChunksMatchesTheCpu) {
  if (!HasDevice()) GTEST_SKIP() << "no CUDA device: CUDA CNN not tested";
  ExpectCudaMatchesCpu(CnnShape{}, 1100, 2);  // CPU chunks of 256, CUDA eval of 1024
}

TEST(CnnCudaTest, UnavailableIsFailedPrecondition) {
  if (HasDevice()) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_EQ(NewCudaCnn(CnnShape{}).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace gnc
