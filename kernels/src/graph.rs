//! CUDA graphs of a step's GPU work: [`StepGraph::capture`] records everything a closure
//! launches on libtorch's current stream (libtorch's ops, cuBLAS, ausa's kernels, and the
//! autograd engine's backward, which follows the forward's stream) into one graph, and
//! [`StepGraph::replay`] launches all of it again with one driver call: no host work per
//! kernel, so a replay takes the GPU's time, not the host's.
//!
//! What a step must respect to be captured (a capture that breaks one fails with an error
//! naming it, and nothing is left half-routed):
//! - the current stream is a side stream ([`crate::shim::PoolStream`]): the legacy default
//!   stream cannot be captured;
//! - everything lazy has happened once before (NVRTC compiles, cuBLAS handles and
//!   workspaces, the allocator's first blocks): run the step eagerly first, on the same
//!   stream;
//! - the step never waits for the GPU (no `.double_value()`, no pageable copies) and has
//!   fixed shapes: a replay re-runs the same kernels on the same addresses, so new inputs
//!   are fed by copying them into the tensors the capture read (`copy_`), which
//!   [`StepGraph::capture`] keeps alive with the graph.
//!
//! Memory: while the capture runs, every allocation on the capture stream comes from a
//! pool private to the graph (through the shim, the way libtorch's own `CUDAGraph` does
//! it), so a temporary freed during the capture is never handed to another tensor while a
//! replay may still write it. The pool is given up when the graph is dropped.
//!
//! Why here and not libtorch's `at::cuda::CUDAGraph`: that class lives in
//! `libtorch_cuda.so`, which the binary must not link (it starts on machines without CUDA;
//! see `kernels/shim/ausa_shim.cpp`); the driver's stream capture through `cudarc` plus
//! the allocator's virtual graph-pool methods through the shim is the same mechanism.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::{sys, CudaGraph};
use tch::Tensor;

use crate::cuda::{CudaError, CudaKernels};
use crate::shim;

/// Ids of the graphs' private pools. libtorch numbers its own graph pools from 1; ours start
/// far above so the two could never meet in one process.
static NEXT_POOL: AtomicU64 = AtomicU64::new(1 << 48);

/// One captured step, ready to replay on the stream it was captured on.
pub struct StepGraph {
    /// `None` only while dropping (the graph must go before its pool).
    graph: Option<CudaGraph>,
    ordinal: usize,
    pool: u64,
    /// The capture stream's `cudaStream_t` address.
    stream: usize,
    /// The tensors the step reads from outside (inputs, parameters, gradients): held so
    /// their memory stays theirs while the graph reads and writes it.
    _keep: Vec<Tensor>,
}

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepGraph")
            .field("ordinal", &self.ordinal)
            .field("pool", &self.pool)
            .finish()
    }
}

fn shim_error(what: &str) -> impl Fn(shim::ShimError) -> CudaError + '_ {
    move |e| CudaError::Driver(format!("{what}: {e}"))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".to_string())
}

impl StepGraph {
    /// Captures what `step` launches on device `ordinal`'s current stream, keeping the
    /// tensors of `keep` (what the step reads and writes that outlives it) alive with the
    /// graph, and returns the graph with `step`'s result (tensors allocated by the capture:
    /// a replay rewrites them in place). A step that panics or does something a capture
    /// forbids is an error; the stream and the allocator are left as they were.
    pub fn capture<R>(
        ordinal: usize,
        keep: &[&Tensor],
        step: impl FnOnce() -> R,
    ) -> Result<(StepGraph, R), CudaError> {
        let kernels = CudaKernels::shared(ordinal)?;
        let stream = kernels.current_stream()?;
        let handle = stream.cu_stream() as usize;
        if handle == 0 {
            return Err(CudaError::Input(
                "a CUDA graph cannot be captured on the legacy default stream: make a side \
                 stream current first (shim::PoolStream)"
                    .to_string(),
            ));
        }
        let pool = NEXT_POOL.fetch_add(1, Ordering::Relaxed);
        shim::cuda_graph_pool_begin(ordinal, handle, pool)
            .map_err(shim_error("routing the capture's allocations to its pool"))?;
        let give_up = |error: CudaError| {
            let _ = shim::cuda_graph_pool_end(ordinal, pool);
            let _ = shim::cuda_graph_pool_release(ordinal, pool);
            error
        };
        // Relaxed: the autograd engine's thread launches into the same capture, and the
        // allocator may still query events of earlier work while it runs.
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| give_up(CudaError::Driver(format!("starting a capture: {e}"))))?;
        let ran = catch_unwind(AssertUnwindSafe(step));
        // Always end the capture, whatever the step did, so the stream is usable again.
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        let routed = shim::cuda_graph_pool_end(ordinal, pool);
        // From here the routing has ended: a failure only gives the pool up.
        let give_up = |error: CudaError| {
            let _ = shim::cuda_graph_pool_release(ordinal, pool);
            error
        };
        let result = match ran {
            Ok(result) => result,
            Err(payload) => {
                return Err(give_up(CudaError::Driver(format!(
                    "the step failed while being captured in a CUDA graph: {}",
                    panic_message(payload.as_ref())
                ))))
            }
        };
        let graph = match ended {
            Ok(Some(graph)) => graph,
            Ok(None) => {
                return Err(give_up(CudaError::Input(
                    "the captured step launched nothing on the GPU".to_string(),
                )))
            }
            Err(e) => {
                return Err(give_up(CudaError::Driver(format!(
                    "capturing the step in a CUDA graph: {e} (something in it cannot be \
                     captured: a wait for the GPU, a pageable host copy, or work on another \
                     stream)"
                ))))
            }
        };
        let graph = StepGraph {
            graph: Some(graph),
            ordinal,
            pool,
            stream: handle,
            _keep: keep.iter().map(|t| t.shallow_clone()).collect(),
        };
        routed.map_err(shim_error("ending the capture's pool"))?;
        graph
            .graph
            .as_ref()
            .map(CudaGraph::upload)
            .transpose()
            .map_err(|e| CudaError::Driver(format!("uploading the graph: {e}")))?;
        Ok((graph, result))
    }

    /// Launches the captured work again, asynchronously, on the capture stream, which
    /// must still be libtorch's current stream (so the replay is ordered with the work
    /// around it).
    pub fn replay(&self) -> Result<(), CudaError> {
        let current = crate::shim::cuda_current_stream(self.ordinal)
            .map_err(shim_error("libtorch's current stream"))?;
        if current != self.stream {
            return Err(CudaError::Input(
                "a CUDA graph replays on the stream it was captured on: make that stream \
                 current again"
                    .to_string(),
            ));
        }
        match &self.graph {
            Some(graph) => Ok(graph.launch()?),
            None => Err(CudaError::Input("the graph was destroyed".to_string())),
        }
    }
}

impl Drop for StepGraph {
    fn drop(&mut self) {
        // A replay may still run: wait for it, then the executable graph goes, and only
        // then the pool, whose blocks nothing can write any more.
        tch::Cuda::synchronize(self.ordinal as i64);
        drop(self.graph.take());
        let _ = shim::cuda_graph_pool_release(self.ordinal, self.pool);
    }
}
