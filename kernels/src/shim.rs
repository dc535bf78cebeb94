//! The C++ shim (`kernels/shim/ausa_shim.cpp`, compiled by `build.rs` with the `cc` crate
//! against libtorch's headers): what `tch` does not expose.
//!
//! - CUDA caching-allocator statistics ([`cuda_memory`], [`cuda_reset_peak`]) and the
//!   driver's free memory ([`cuda_mem_info`]), for `max_vram_mb` and `--memory-safe`;
//! - libtorch's current CUDA stream ([`cuda_current_stream`]), for kernels launched
//!   outside libtorch on the same stream, a side stream made current for a scope
//!   ([`PoolStream`]), and pinned host memory ([`pin_memory`]);
//! - one AdamW step through libtorch's fused kernel with clipping and the fp16 skip on the
//!   device, so a training step never waits for the GPU ([`adamw_step`]),
//!   [`set_grads_to_none`], and [`backward_with_grad`] (a backward pass from a given output
//!   gradient).
//!
//! The shim names only libc10 / libtorch_cpu symbols (the CUDA parts go through libc10's
//! device-generic allocator and stream interfaces, which `libtorch_cuda.so` fills in when the
//! trainer loads it), so a binary using it still starts on a machine without CUDA libraries;
//! the CUDA functions then return an error.
//!
//! The unsafe code of this module: the FFI calls. Invariant of every call below: each
//! `*mut C_tensor` passed to C++ comes from a live `tch::Tensor` borrowed for the duration of
//! the call (C++ copies the handle, never keeps the pointer); output pointers point to locals;
//! an error string returned by C++ is read once and freed with `ausa_shim_free_error`; a
//! returned tensor pointer is a fresh `new at::Tensor` whose ownership passes to
//! `Tensor::from_ptr`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};

use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn ausa_shim_free_error(error: *mut c_char);
    fn ausa_cuda_memory_stats(
        device: c_int,
        allocated: *mut i64,
        peak: *mut i64,
        reserved: *mut i64,
    ) -> *mut c_char;
    fn ausa_cuda_reset_peak(device: c_int) -> *mut c_char;
    fn ausa_cuda_mem_info(device: c_int, free: *mut u64, total: *mut u64) -> *mut c_char;
    fn ausa_cuda_current_stream(device: c_int, stream: *mut *mut c_void) -> *mut c_char;
    fn ausa_cuda_use_pool_stream(
        device: c_int,
        previous_id: *mut i64,
        stream: *mut *mut c_void,
    ) -> *mut c_char;
    fn ausa_cuda_restore_stream(device: c_int, id: i64) -> *mut c_char;
    fn ausa_cuda_graph_pool_begin(device: c_int, stream: *mut c_void, id: u64) -> *mut c_char;
    fn ausa_cuda_graph_pool_end(device: c_int, id: u64) -> *mut c_char;
    fn ausa_cuda_graph_pool_release(device: c_int, id: u64) -> *mut c_char;
    fn ausa_set_grads_to_none(params: *const *mut C_tensor, n: i64) -> *mut c_char;
    fn ausa_backward_with_grad(out: *mut C_tensor, grad: *mut C_tensor) -> *mut c_char;
    fn ausa_pin_memory(t: *mut C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn ausa_adamw_step(
        params: *const *mut C_tensor,
        exp_avg: *const *mut C_tensor,
        exp_avg_sq: *const *mut C_tensor,
        decay: *const u8,
        n: i64,
        step: *mut C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        max_norm: f64,
        unscale: f64,
        norm_out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// An error from libtorch inside the shim (the C++ exception's message, without the C++
/// backtrace), or a precondition the Rust side checked first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShimError(pub String);

/// Converts the C++ side's error convention (null = success) into a `Result`.
fn check(error: *mut c_char) -> Result<(), ShimError> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated malloc'd string from `error_copy`, read
    // once here and then freed by the shim's own `free` (module invariant).
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as above; the pointer is not used after this.
    unsafe { ausa_shim_free_error(error) };
    Err(ShimError(message))
}

fn device_index(device: usize) -> Result<c_int, ShimError> {
    c_int::try_from(device).map_err(|_| ShimError(format!("CUDA device index {device}")))
}

/// The CUDA caching allocator's byte counts for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaMemory {
    /// Bytes allocated now.
    pub allocated: u64,
    /// Most bytes allocated at once since the process started or the last
    /// [`cuda_reset_peak`] (`torch.cuda.max_memory_allocated`).
    pub peak_allocated: u64,
    /// Bytes the allocator holds from the driver (`torch.cuda.memory_reserved`).
    pub reserved: u64,
}

/// The caching allocator's statistics for CUDA device `device`; an error when libtorch's CUDA
/// library is not loaded.
pub fn cuda_memory(device: usize) -> Result<CudaMemory, ShimError> {
    let (mut allocated, mut peak, mut reserved) = (0i64, 0i64, 0i64);
    // SAFETY: the three outputs point to locals (module invariant).
    check(unsafe {
        ausa_cuda_memory_stats(
            device_index(device)?,
            &mut allocated,
            &mut peak,
            &mut reserved,
        )
    })?;
    let bytes = |v: i64| v.max(0) as u64;
    Ok(CudaMemory {
        allocated: bytes(allocated),
        peak_allocated: bytes(peak),
        reserved: bytes(reserved),
    })
}

/// Resets the allocator's peak to the bytes allocated now
/// (`torch.cuda.reset_peak_memory_stats`).
pub fn cuda_reset_peak(device: usize) -> Result<(), ShimError> {
    // SAFETY: no pointers are passed.
    check(unsafe { ausa_cuda_reset_peak(device_index(device)?) })
}

/// `(free, total)` bytes of CUDA device `device` as the driver reports them (memory the
/// caching allocator holds counts as used).
pub fn cuda_mem_info(device: usize) -> Result<(u64, u64), ShimError> {
    let (mut free, mut total) = (0u64, 0u64);
    // SAFETY: the outputs point to locals.
    check(unsafe { ausa_cuda_mem_info(device_index(device)?, &mut free, &mut total) })?;
    Ok((free, total))
}

/// libtorch's current `cudaStream_t` on device `device`, as an address (0 is the legacy
/// default stream, libtorch's unless the code switches streams).
pub fn cuda_current_stream(device: usize) -> Result<usize, ShimError> {
    let mut stream: *mut c_void = std::ptr::null_mut();
    // SAFETY: the output points to a local.
    check(unsafe { ausa_cuda_current_stream(device_index(device)?, &mut stream) })?;
    Ok(stream as usize)
}

/// While alive, a stream of libtorch's pool is this thread's current CUDA stream on its
/// device (libtorch's ops and, through [`cuda_current_stream`], ausa's kernels run on
/// it); dropping it makes the previous stream current again. The pool's streams do not
/// synchronize with the legacy default stream, so code that ignored the current stream
/// would race with the work around it: how the tests check that the kernels follow it.
#[derive(Debug)]
pub struct PoolStream {
    device: usize,
    previous: i64,
    handle: usize,
}

impl PoolStream {
    /// Makes a pool stream of CUDA device `device` current.
    pub fn enter(device: usize) -> Result<PoolStream, ShimError> {
        let (mut previous, mut stream) = (0i64, std::ptr::null_mut());
        // SAFETY: the outputs point to locals.
        check(unsafe {
            ausa_cuda_use_pool_stream(device_index(device)?, &mut previous, &mut stream)
        })?;
        Ok(PoolStream {
            device,
            previous,
            handle: stream as usize,
        })
    }

    /// The stream's `cudaStream_t`, as an address (never 0: not the legacy stream).
    pub fn handle(&self) -> usize {
        self.handle
    }
}

impl Drop for PoolStream {
    fn drop(&mut self) {
        // The device index was valid when the guard was made; restoring a stream id
        // libtorch handed out cannot fail, and a drop has nowhere to report to.
        if let Ok(device) = device_index(self.device) {
            // SAFETY: no pointers cross; an error string is freed by `check`.
            let _ = check(unsafe { ausa_cuda_restore_stream(device, self.previous) });
        }
    }
}

/// Routes every allocation libtorch's CUDA caching allocator makes on `stream` (a
/// `cudaStream_t` address, the stream being captured) into the private pool `id` of a
/// CUDA graph, until [`cuda_graph_pool_end`]: what keeps a captured graph's memory from
/// being handed to other tensors (see `crate::graph`).
pub fn cuda_graph_pool_begin(device: usize, stream: usize, id: u64) -> Result<(), ShimError> {
    // SAFETY: plain values cross; the stream address is only compared, never dereferenced.
    check(unsafe { ausa_cuda_graph_pool_begin(device_index(device)?, stream as *mut c_void, id) })
}

/// Stops routing allocations into graph pool `id` (its blocks stay reserved to it).
pub fn cuda_graph_pool_end(device: usize, id: u64) -> Result<(), ShimError> {
    // SAFETY: plain values cross.
    check(unsafe { ausa_cuda_graph_pool_end(device_index(device)?, id) })
}

/// Gives graph pool `id` up after its graph is destroyed: its blocks return to the cache
/// as the tensors that still hold them die.
pub fn cuda_graph_pool_release(device: usize, id: u64) -> Result<(), ShimError> {
    // SAFETY: plain values cross.
    check(unsafe { ausa_cuda_graph_pool_release(device_index(device)?, id) })
}

fn pointers(tensors: &[Tensor]) -> Vec<*mut C_tensor> {
    // The C++ side only copies the handles (module invariant); the cast from `*const` is
    // how tch itself passes tensors to its C API.
    tensors
        .iter()
        .map(|t| t.as_ptr() as *mut C_tensor)
        .collect()
}

/// Backpropagates `out` with the output gradient `grad` (PyTorch's `out.backward(grad)`),
/// accumulating into the `.grad` of the leaves it depends on: how a benchmark times a
/// backward pass the way PyTorch's peers do, without reducing the output to a scalar.
pub fn backward_with_grad(out: &Tensor, grad: &Tensor) -> Result<(), ShimError> {
    // SAFETY: `out` and `grad` are live tensors borrowed for the call (module invariant).
    check(unsafe {
        ausa_backward_with_grad(
            out.as_ptr() as *mut C_tensor,
            grad.as_ptr() as *mut C_tensor,
        )
    })
}

/// Drops the gradients of `params` (PyTorch's `zero_grad(set_to_none=True)`), so the next
/// backward writes them instead of adding into zeros.
pub fn set_grads_to_none(params: &mut [Tensor]) -> Result<(), ShimError> {
    let ptrs = pointers(params);
    // SAFETY: `ptrs` are handles of the live tensors in `params`, borrowed for the call.
    check(unsafe { ausa_set_grads_to_none(ptrs.as_ptr(), ptrs.len() as i64) })
}

/// A copy of CPU tensor `t` in pinned (page-locked) memory from libtorch's caching host
/// allocator, so a `non_blocking` copy to the GPU does not wait for queued GPU work; an
/// error without CUDA.
pub fn pin_memory(t: &Tensor) -> Result<Tensor, ShimError> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor borrowed for the call; on success `out` is a fresh
    // `new at::Tensor` (module invariant) whose ownership from_ptr takes.
    check(unsafe { ausa_pin_memory(t.as_ptr() as *mut C_tensor, &mut out) })?;
    // SAFETY: as above.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Hyperparameters of one [`adamw_step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWHyper {
    /// Learning rate of this step.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Decoupled weight decay of the parameters marked `decay`.
    pub weight_decay: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub max_norm: f64,
    /// The gradients are this many times too large (the fp16 loss scale; 1 otherwise).
    pub unscale: f64,
}

/// The state of [`adamw_step`]: the moments of every parameter and the shared step count.
#[derive(Debug)]
pub struct AdamWState<'a> {
    /// The parameters (updated in place; each needs a gradient or gets a zero one).
    pub params: &'a mut [Tensor],
    /// First moments, one per parameter, same shape.
    pub exp_avg: &'a mut [Tensor],
    /// Second moments.
    pub exp_avg_sq: &'a mut [Tensor],
    /// Whether each parameter gets weight decay.
    pub decay: &'a [bool],
    /// Steps taken so far: a `Float` scalar on the parameters' device.
    pub step: &'a mut Tensor,
}

/// One AdamW update (libtorch's fused kernel) with gradient clipping, all on the device
/// with no host synchronization. Returns the global gradient norm before clipping (a scalar
/// tensor on the device; read it only when it is logged). When the norm is not finite (an
/// fp16 overflow), nothing changes, the step count included, and the returned norm is
/// non-finite.
pub fn adamw_step(state: AdamWState<'_>, hyper: AdamWHyper) -> Result<Tensor, ShimError> {
    let n = state.params.len();
    if state.exp_avg.len() != n || state.exp_avg_sq.len() != n || state.decay.len() != n {
        return Err(ShimError(format!(
            "adamw_step: {n} parameters but {} / {} moments and {} decay flags",
            state.exp_avg.len(),
            state.exp_avg_sq.len(),
            state.decay.len()
        )));
    }
    let device = state.params.first().map_or(Device::Cpu, Tensor::device);
    if state.step.kind() != Kind::Float || state.step.numel() != 1 || state.step.device() != device
    {
        return Err(ShimError(
            "adamw_step: the step count must be one Float on the parameters' device".into(),
        ));
    }
    if hyper.unscale.is_nan() || hyper.unscale <= 0.0 {
        return Err(ShimError(format!(
            "adamw_step: unscale {} must be positive",
            hyper.unscale
        )));
    }
    let (p, m, v) = (
        pointers(state.params),
        pointers(state.exp_avg),
        pointers(state.exp_avg_sq),
    );
    let decay: Vec<u8> = state.decay.iter().map(|&d| u8::from(d)).collect();
    let mut norm: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: every pointer is a handle of a live tensor borrowed through `state` for the
    // call, `decay` has `n` entries (checked above), `norm` points to a local that C++ sets
    // to a fresh `new at::Tensor` on success (module invariant).
    check(unsafe {
        ausa_adamw_step(
            p.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            decay.as_ptr(),
            n as i64,
            state.step.as_mut_ptr(),
            hyper.lr,
            hyper.beta1,
            hyper.beta2,
            hyper.weight_decay,
            hyper.eps,
            hyper.max_norm,
            hyper.unscale,
            &mut norm,
        )
    })?;
    // SAFETY: on success `norm` is a fresh heap tensor owned by nobody else; from_ptr takes
    // ownership and frees it on drop.
    Ok(unsafe { Tensor::from_ptr(norm) })
}

pub mod autograd;

#[cfg(test)]
mod tests;
