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
#include <torch/csrc/autograd/custom_function.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "guarded.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using ausa_shim::guarded;

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

// Makes a stream of libtorch's pool current on `device` (libtorch's current stream is per
// thread): *handle receives its cudaStream_t, *previous_id the id of the stream it replaces,
// for ausa_cuda_restore_stream. The pool's streams do not synchronize with the legacy default
// stream, so work that ignored the current stream would race with it.
char* ausa_cuda_use_pool_stream(int device, int64_t* previous_id, void** handle) {
  return guarded([&] {
    const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    c10::Device dev(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device));
    c10::Stream pool = impl->getStreamFromGlobalPool(dev, false);
    c10::Stream previous = impl->exchangeStream(pool);
    *previous_id = previous.id();
    *handle = impl->getStreamNativeHandle(pool);
  });
}

// Makes the stream with id `id` (from ausa_cuda_use_pool_stream) current again on `device`.
char* ausa_cuda_restore_stream(int device, int64_t id) {
  return guarded([&] {
    const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    impl->exchangeStream(c10::Stream::unpack3(id, static_cast<c10::DeviceIndex>(device),
                                              c10::DeviceType::CUDA));
  });
}

// A pinned copy of CPU tensor `t` in *out (at::Tensor::pin_memory without the deprecated
// device argument that tch always passes, and its warning).
char* ausa_pin_memory(at::Tensor* t, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(t->pin_memory()); });
}

// Backpropagates `out` with the output gradient `grad` (PyTorch's out.backward(grad)),
// accumulating into the leaves' .grad; tch only backpropagates scalars or collects
// gradients of named inputs.
char* ausa_backward_with_grad(at::Tensor* out, at::Tensor* grad) {
  return guarded([&] { out->backward(*grad); });
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

// ---- Custom autograd ops implemented in Rust -------------------------------------------
// tch has no custom autograd Function. RustFunction is one: its forward and backward call
// back into Rust (kernels/src/shim/autograd.rs) with the op's registry id. Tensors cross
// the boundary as heap handles: C++ hands Rust `new at::Tensor` copies (Rust owns and
// frees them); Rust hands back handles it gave up (C++ copies the value and deletes the
// handle). A callback returns 0, or non-zero with a NUL-terminated message in `err`, which
// becomes a C++ exception here (and, from `apply`, an error string again for Rust).

namespace {

// Capacity of the output, saved-tensor and gradient arrays a callback fills.
constexpr int64_t kMaxTensors = 32;
constexpr int64_t kErrorCap = 1024;

using ForwardCallback = int (*)(uint64_t op, at::Tensor** inputs, int64_t n_in,
                                at::Tensor** outputs, int64_t* n_out, at::Tensor** saved,
                                int64_t* n_saved, int64_t cap, char* err, int64_t err_cap);
using BackwardCallback = int (*)(uint64_t op, at::Tensor** saved, int64_t n_saved,
                                 at::Tensor** grad_outputs, int64_t n_grad_outputs,
                                 at::Tensor** grad_inputs, int64_t n_in, char* err,
                                 int64_t err_cap);

std::vector<at::Tensor*> handles(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor*> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(new at::Tensor(t));
  return out;
}

// Takes back `n` handles Rust gave up; a null handle is an undefined tensor.
std::vector<at::Tensor> take(at::Tensor** ptrs, int64_t n) {
  std::vector<at::Tensor> out;
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (ptrs[i] == nullptr) {
      out.emplace_back();
    } else {
      out.push_back(*ptrs[i]);
      delete ptrs[i];
    }
  }
  return out;
}

struct RustFunction : public torch::autograd::Function<RustFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                at::TensorList inputs, int64_t op,
                                                int64_t forward_fn, int64_t backward_fn) {
    std::vector<at::Tensor> in(inputs.begin(), inputs.end());
    auto in_handles = handles(in);
    at::Tensor* outputs[kMaxTensors] = {nullptr};
    at::Tensor* saved[kMaxTensors] = {nullptr};
    int64_t n_out = 0, n_saved = 0;
    char err[kErrorCap] = {0};
    auto cb = reinterpret_cast<ForwardCallback>(forward_fn);
    // Rust owns (and frees) the input handles from here on, on success or failure.
    int rc = cb(static_cast<uint64_t>(op), in_handles.data(), static_cast<int64_t>(in.size()),
                outputs, &n_out, saved, &n_saved, kMaxTensors, err, kErrorCap);
    if (rc != 0) {
      err[kErrorCap - 1] = 0;
      throw std::runtime_error(err);
    }
    auto out = take(outputs, n_out);
    ctx->save_for_backward(take(saved, n_saved));
    ctx->saved_data["op"] = op;
    ctx->saved_data["backward"] = backward_fn;
    ctx->saved_data["inputs"] = static_cast<int64_t>(in.size());
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const int64_t n_in = ctx->saved_data["inputs"].toInt();
    auto saved_handles = handles(saved);
    // libtorch materializes the gradient of an output that did not reach the loss as
    // zeros; an undefined one would still reach Rust, as a null handle.
    std::vector<at::Tensor*> grad_handles;
    grad_handles.reserve(grad_outputs.size());
    for (const auto& g : grad_outputs) grad_handles.push_back(g.defined() ? new at::Tensor(g) : nullptr);
    at::Tensor* grads[kMaxTensors] = {nullptr};
    char err[kErrorCap] = {0};
    auto cb = reinterpret_cast<BackwardCallback>(ctx->saved_data["backward"].toInt());
    int rc = cb(static_cast<uint64_t>(ctx->saved_data["op"].toInt()), saved_handles.data(),
                static_cast<int64_t>(saved.size()), grad_handles.data(),
                static_cast<int64_t>(grad_outputs.size()), grads, n_in, err, kErrorCap);
    if (rc != 0) {
      err[kErrorCap - 1] = 0;
      throw std::runtime_error(err);
    }
    auto out = take(grads, n_in);
    // No gradient for the three non-tensor arguments of forward.
    out.emplace_back();
    out.emplace_back();
    out.emplace_back();
    return out;
  }
};

}  // namespace

extern "C" {

// Runs Rust op `op` under autograd: `forward_fn` computes its outputs from `inputs` (and the
// tensors it keeps for the backward pass); `backward_fn` later turns the outputs' gradients
// into the inputs'. Writes up to `cap` output handles into `outputs` and their count into
// `*n_out`.
char* ausa_autograd_apply(uint64_t op, at::Tensor** inputs, int64_t n_in, void* forward_fn,
                          void* backward_fn, at::Tensor** outputs, int64_t cap,
                          int64_t* n_out) {
  return guarded([&] {
    std::vector<at::Tensor> in;
    in.reserve(static_cast<size_t>(n_in));
    for (int64_t i = 0; i < n_in; ++i) in.push_back(*inputs[i]);
    auto out = RustFunction::apply(at::TensorList(in), static_cast<int64_t>(op),
                                   reinterpret_cast<int64_t>(forward_fn),
                                   reinterpret_cast<int64_t>(backward_fn));
    if (static_cast<int64_t>(out.size()) > cap) {
      throw std::runtime_error("a custom op returned more outputs than the caller expects");
    }
    for (size_t i = 0; i < out.size(); ++i) outputs[i] = new at::Tensor(out[i]);
    *n_out = static_cast<int64_t>(out.size());
  });
}

}  // extern "C"
