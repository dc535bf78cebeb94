// The CUDA graph pool of kernels/src/graph.rs: the one part of the shim that needs the CUDA
// caching allocator's own class (c10::cuda::CUDACachingAllocator::CUDAAllocator), in a
// translation unit of its own.
//
// Link rule (ausa_shim.cpp's header): nothing here may name a libc10_cuda or CUDA runtime
// symbol. The three methods called below are pure virtual in CUDAAllocator, so each call is
// an indirect call through the object libc10 hands out; no definition from the header is
// used. Kept apart from ausa_shim.cpp because the header also defines some of
// CUDAAllocator's virtual methods inline (getMemoryInfo calls cudaMemGetInfo), and the
// compiler's speculative devirtualization would inline those into the shim's other calls
// through DeviceAllocator, naming CUDA runtime symbols. Built only where the CUDA runtime
// headers are present (kernels/build.rs defines AUSA_SHIM_CUDA_HEADERS); elsewhere the
// functions return an error.
//
// While a stream is being captured, every allocation made on it must come from a pool that
// belongs to the graph, as libtorch's own at::cuda::CUDAGraph does it; otherwise a block
// freed during the capture returns to the shared cache and a later tensor could share the
// memory a replay writes. ausa_cuda_graph_pool_begin routes the allocations on `stream` into
// private pool `id`, ausa_cuda_graph_pool_end stops that (the pool keeps its blocks), and
// ausa_cuda_graph_pool_release gives the pool up once the graph is destroyed (its blocks
// return to the cache when their last tensors die).

#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>
#include <stdexcept>

#include "guarded.h"

#ifdef AUSA_SHIM_CUDA_HEADERS
#include <c10/cuda/CUDACachingAllocator.h>

namespace {

// The object registered for DeviceType::CUDA is always a CUDAAllocator (the native
// caching allocator or cudaMallocAsync's); static_cast, not dynamic_cast, because the
// class's typeinfo lives in libc10_cuda. Throws while libtorch_cuda is not loaded.
c10::cuda::CUDACachingAllocator::CUDAAllocator* cuda_caching_allocator() {
  return static_cast<c10::cuda::CUDACachingAllocator::CUDAAllocator*>(
      c10::getDeviceAllocator(c10::DeviceType::CUDA));
}

// A graph pool of ours: {id, 0}, the form libtorch gives its graph-private pools.
c10::MempoolId_t graph_pool(uint64_t id) { return {static_cast<c10::CaptureId_t>(id), 0}; }

}  // namespace
#else
namespace {

[[noreturn]] void no_cuda_graphs() {
  throw std::runtime_error(
      "this build of ausa has no CUDA graphs: its shim was compiled without the CUDA "
      "runtime headers (tests/libtorch.sh installs them)");
}

}  // namespace
#endif

extern "C" {

char* ausa_cuda_graph_pool_begin(int device, void* stream, uint64_t id) {
  return ausa_shim::guarded([&] {
#ifdef AUSA_SHIM_CUDA_HEADERS
    auto capturing = static_cast<cudaStream_t>(stream);
    cuda_caching_allocator()->beginAllocateToPool(
        static_cast<c10::DeviceIndex>(device), graph_pool(id),
        [capturing](cudaStream_t s) { return s == capturing; });
#else
    (void)device, (void)stream, (void)id;
    no_cuda_graphs();
#endif
  });
}

char* ausa_cuda_graph_pool_end(int device, uint64_t id) {
  return ausa_shim::guarded([&] {
#ifdef AUSA_SHIM_CUDA_HEADERS
    cuda_caching_allocator()->endAllocateToPool(static_cast<c10::DeviceIndex>(device),
                                                graph_pool(id));
#else
    (void)device, (void)id;
    no_cuda_graphs();
#endif
  });
}

char* ausa_cuda_graph_pool_release(int device, uint64_t id) {
  return ausa_shim::guarded([&] {
#ifdef AUSA_SHIM_CUDA_HEADERS
    cuda_caching_allocator()->releasePool(static_cast<c10::DeviceIndex>(device),
                                          graph_pool(id));
#else
    (void)device, (void)id;
    no_cuda_graphs();
#endif
  });
}

}  // extern "C"
