// ausa's C++ shim over libtorch: what tch does not expose (kernels/src/shim.rs is the Rust side).
//
// Link rule: this file may only use symbols of libc10 and libtorch_cpu. The binary must start
// on machines without CUDA libraries, and it loads libtorch_cuda.so itself at run time
// (trainers/lm/src/device.rs), so nothing here may name a c10::cuda or at::cuda symbol. The
// CUDA pieces go through the device-generic interfaces that libc10 defines and that
// libc10_cuda registers when it is loaded: c10::DeviceAllocator
// (memory statistics, free memory) and c10::impl::DeviceGuardImplInterface (streams).
// Before CUDA is loaded these calls fail with an error message instead of crashing.
//
// Error convention: every function returns nullptr on success or a malloc'd, NUL-terminated
// message (the C++ exception's text) that the caller frees with ausa_shim_free_error. No
// exception crosses the C boundary.

#include <ATen/ATen.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

namespace {

char* error_copy(const char* what) {
  size_t n = std::strlen(what);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, what, n + 1);
  return out;
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    // what_without_backtrace: the message a user can act on, not the C++ stack.
    return error_copy(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return error_copy(e.what());
  } catch (...) {
    return error_copy("unknown C++ exception in the ausa shim");
  }
}

c10::DeviceAllocator* cuda_allocator() {
  // Throws (caught by guarded) while libtorch_cuda is not loaded: no CUDA allocator is set.
  return c10::getDeviceAllocator(c10::DeviceType::CUDA);
}

}  // namespace

extern "C" {

void ausa_shim_free_error(char* error) { std::free(error); }

// Bytes the CUDA caching allocator has handed out on `device`: now, the peak since the last
// reset, and reserved from the driver (all the AGGREGATE pool).
char* ausa_cuda_memory_stats(int device, int64_t* allocated, int64_t* peak, int64_t* reserved) {
  return guarded([&] {
    auto stats = cuda_allocator()->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].current;
    *peak = stats.allocated_bytes[all].peak;
    *reserved = stats.reserved_bytes[all].current;
  });
}

char* ausa_cuda_reset_peak(int device) {
  return guarded([&] { cuda_allocator()->resetPeakStats(static_cast<c10::DeviceIndex>(device)); });
}

// Free and total device memory as the driver reports them (cudaMemGetInfo).
char* ausa_cuda_mem_info(int device, uint64_t* free_bytes, uint64_t* total_bytes) {
  return guarded([&] {
    auto info = cuda_allocator()->getMemoryInfo(static_cast<c10::DeviceIndex>(device));
    *free_bytes = info.first;
    *total_bytes = info.second;
  });
}

// The cudaStream_t libtorch launches on for `device` (the legacy default stream, null, unless
// the code switched streams).
char* ausa_cuda_current_stream(int device, void** stream) {
  return guarded([&] {
    const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    auto s = impl->getStream(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device)));
    *stream = impl->getStreamNativeHandle(s);
  });
}

// A pinned copy of CPU tensor `t` in *out (at::Tensor::pin_memory without the deprecated
// device argument that tch always passes, and its warning).
char* ausa_pin_memory(at::Tensor* t, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(t->pin_memory()); });
}

// Drops the gradients of `params` (PyTorch's zero_grad(set_to_none=True)): the next backward
// writes fresh gradients instead of adding into zeroed ones.
char* ausa_set_grads_to_none(at::Tensor** params, int64_t n) {
  return guarded([&] {
    for (int64_t i = 0; i < n; ++i) params[i]->mutable_grad().reset();
  });
}

// One AdamW step over all parameters with no host synchronization:
//   norm = || (grad_i / unscale)_i ||_2 (the global norm before clipping, returned in *norm_out),
//   clip = min(1, max_norm / (norm + 1e-6)) when max_norm > 0,
//   found_inf = !isfinite(norm): then nothing changes (no update, the step count stays),
// then libtorch's fused AdamW (aten::_fused_adamw_, CPU and CUDA kernels) on each decay group
// with grad_scale = unscale / clip, after step += 1 - found_inf. `decay[i]` selects the weight
// decay of parameter i. `step` is a float scalar tensor on the parameters' device shared by all
// parameters (they always step together). A parameter without a gradient steps with a zero
// gradient (its moments decay), as the tensor-op AdamW this replaced did.
char* ausa_adamw_step(at::Tensor** params, at::Tensor** exp_avg, at::Tensor** exp_avg_sq,
                      const uint8_t* decay, int64_t n, at::Tensor* step, double lr, double beta1,
                      double beta2, double weight_decay, double eps, double max_norm,
                      double unscale, at::Tensor** norm_out) {
  return guarded([&] {
    c10::AutoGradMode no_grad(false);
    std::vector<at::Tensor> grads;
    grads.reserve(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      at::Tensor g = params[i]->grad();
      if (!g.defined()) {
        params[i]->mutable_grad() = at::zeros_like(*params[i]);
        g = params[i]->grad();
      }
      grads.push_back(g);
    }
    auto norms = at::_foreach_norm(grads, 2);
    at::Tensor norm = at::linalg_vector_norm(at::stack(norms), 2) / unscale;
    at::Tensor found_inf = norm.isfinite().logical_not().to(at::kFloat);
    at::Tensor grad_scale = at::full({}, unscale, norm.options().dtype(at::kFloat));
    if (max_norm > 0) {
      at::Tensor clip = (max_norm / (norm + 1e-6)).clamp_max(1.0);
      grad_scale = grad_scale / clip;
    }
    step->add_(1.0 - found_inf);
    for (bool group : {true, false}) {
      std::vector<at::Tensor> p, g, m, v, s;
      for (int64_t i = 0; i < n; ++i) {
        if ((decay[i] != 0) != group) continue;
        p.push_back(*params[i]);
        g.push_back(grads[static_cast<size_t>(i)]);
        m.push_back(*exp_avg[i]);
        v.push_back(*exp_avg_sq[i]);
        s.push_back(*step);
      }
      if (p.empty()) continue;
      at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, lr, beta1, beta2,
                        group ? weight_decay : 0.0, eps, /*amsgrad=*/false,
                        /*maximize=*/false, grad_scale, found_inf);
    }
    *norm_out = new at::Tensor(norm);
  });
}

}  // extern "C"
