//! Custom autograd ops written in Rust: [`CustomOp`] is the forward and backward of an op
//! whose gradient libtorch cannot derive (a CUDA kernel, or a backward written by hand);
//! [`OpHandle::apply`] runs it under libtorch's autograd through the shim's
//! `RustFunction` (a C++ `torch::autograd::Function` that calls back into this module).
//!
//! Ops are registered once ([`OpHandle::register`], e.g. once per model layer) and live for
//! the rest of the process: libtorch's graph may call an op's backward at any time after
//! its forward, so the op must outlive every graph that names it. Registration is the only
//! allocation that is never freed; a model registers a few ops, not one per step.
//!
//! Invariant of the callbacks below (the unsafe code of this module): every tensor handle
//! C++ passes in is a fresh `new at::Tensor` whose ownership passes to `Tensor::from_ptr`
//! here; every handle passed back is one this side gave up with [`std::mem::forget`] after
//! taking its pointer, which C++ copies and deletes; the arrays C++ passes hold `cap`
//! (outputs, saved) or `n_in` (gradients) writable slots and the given numbers of inputs;
//! `err` holds `err_cap` writable bytes. A panic in an op is caught here: nothing unwinds
//! into C++.

use std::ffi::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, RwLock};

use tch::Tensor;
use torch_sys::C_tensor;

use super::{check, ShimError};

extern "C" {
    fn ausa_autograd_apply(
        op: u64,
        inputs: *const *mut C_tensor,
        n_in: i64,
        forward_fn: *mut c_void,
        backward_fn: *mut c_void,
        outputs: *mut *mut C_tensor,
        cap: i64,
        n_out: *mut i64,
    ) -> *mut c_char;
}

/// Most outputs, saved tensors and inputs of one op (`kMaxTensors` in the shim).
pub const MAX_TENSORS: usize = 32;

/// What [`CustomOp::forward`] returns: the outputs, and what the backward pass needs.
pub struct Forward {
    /// The op's outputs, in order.
    pub outputs: Vec<Tensor>,
    /// Tensors kept for [`CustomOp::backward`] (inputs among them when it needs them).
    pub saved: Vec<Tensor>,
}

/// An op with a hand-written backward. Both methods run with gradient recording off.
pub trait CustomOp: Send + Sync {
    /// The op's name, for error messages.
    fn name(&self) -> &str;
    /// Outputs and saved tensors from the inputs.
    fn forward(&self, inputs: &[Tensor]) -> Result<Forward, String>;
    /// The gradient of each input (`None`: no gradient, e.g. for a mask) from the saved
    /// tensors and the gradient of each output (zeros for an output the loss does not
    /// use). Must return exactly one entry per forward input.
    fn backward(
        &self,
        saved: &[Tensor],
        grad_outputs: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>, String>;
}

/// Every registered op; an [`OpHandle`] is an index into it.
static OPS: RwLock<Vec<Arc<dyn CustomOp>>> = RwLock::new(Vec::new());

fn op_of(id: u64) -> Result<Arc<dyn CustomOp>, String> {
    let ops = OPS.read().unwrap_or_else(|e| e.into_inner());
    usize::try_from(id)
        .ok()
        .and_then(|i| ops.get(i).cloned())
        .ok_or_else(|| format!("no custom op with id {id}"))
}

/// A registered [`CustomOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpHandle(u64);

impl OpHandle {
    /// Registers `op` for the rest of the process.
    pub fn register(op: Arc<dyn CustomOp>) -> OpHandle {
        let mut ops = OPS.write().unwrap_or_else(|e| e.into_inner());
        ops.push(op);
        OpHandle(ops.len() as u64 - 1)
    }

    /// [`OpHandle::apply`] for an op with one output: that output.
    pub fn apply_one(self, inputs: &[&Tensor]) -> Result<Tensor, ShimError> {
        self.apply(inputs)?
            .into_iter()
            .next()
            .ok_or_else(|| ShimError("the op returned no output".to_string()))
    }

    /// Runs the op on `inputs` under autograd: its outputs have a gradient function that
    /// calls the op's backward whenever an input requires a gradient.
    pub fn apply(self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, ShimError> {
        if inputs.len() > MAX_TENSORS {
            return Err(ShimError(format!(
                "a custom op takes at most {MAX_TENSORS} tensors, got {}",
                inputs.len()
            )));
        }
        let ptrs: Vec<*mut C_tensor> = inputs.iter().map(|t| t.as_ptr() as *mut _).collect();
        let mut outputs = [std::ptr::null_mut::<C_tensor>(); MAX_TENSORS];
        let mut n_out = 0i64;
        // SAFETY: module invariant: the inputs are live tensors borrowed for the call
        // (C++ copies them), `outputs` has MAX_TENSORS slots, the callbacks are this
        // module's functions with the signatures the shim declares.
        check(unsafe {
            ausa_autograd_apply(
                self.0,
                ptrs.as_ptr(),
                ptrs.len() as i64,
                forward_callback as *mut c_void,
                backward_callback as *mut c_void,
                outputs.as_mut_ptr(),
                MAX_TENSORS as i64,
                &mut n_out,
            )
        })?;
        Ok(outputs[..n_out as usize]
            .iter()
            // SAFETY: each of the first n_out slots is a fresh `new at::Tensor` (invariant).
            .map(|&p| unsafe { Tensor::from_ptr(p) })
            .collect())
    }
}

/// Writes `message` (truncated, NUL-terminated) into the shim's error buffer.
fn write_error(err: *mut c_char, cap: i64, message: &str) -> c_int {
    let cap = usize::try_from(cap).unwrap_or(0);
    if cap > 0 {
        let n = message.len().min(cap - 1);
        // SAFETY: `err` has `cap` writable bytes (invariant); n + 1 <= cap.
        unsafe {
            std::ptr::copy_nonoverlapping(message.as_ptr(), err.cast::<u8>(), n);
            *err.add(n) = 0;
        }
    }
    1
}

/// Takes ownership of `n` handles from C++ (a null handle becomes an undefined tensor).
///
/// # Safety
/// `ptrs` points to `n` handles C++ created with `new at::Tensor` (or null), not used by
/// C++ afterwards.
unsafe fn take(ptrs: *const *mut C_tensor, n: i64) -> Vec<Tensor> {
    (0..usize::try_from(n).unwrap_or(0))
        .map(|i| {
            let p = *ptrs.add(i);
            if p.is_null() {
                Tensor::new()
            } else {
                Tensor::from_ptr(p)
            }
        })
        .collect()
}

/// Gives `tensors` to C++ through `slots` (module invariant: C++ deletes each handle).
///
/// # Safety
/// `slots` has room for `tensors.len()` pointers.
unsafe fn give(tensors: Vec<Option<Tensor>>, slots: *mut *mut C_tensor) {
    for (i, t) in tensors.into_iter().enumerate() {
        *slots.add(i) = match t {
            Some(mut t) => {
                let p = t.as_mut_ptr();
                std::mem::forget(t);
                p
            }
            None => std::ptr::null_mut(),
        };
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a custom op panicked".into())
}

#[allow(clippy::too_many_arguments)]
extern "C" fn forward_callback(
    op: u64,
    inputs: *const *mut C_tensor,
    n_in: i64,
    outputs: *mut *mut C_tensor,
    n_out: *mut i64,
    saved: *mut *mut C_tensor,
    n_saved: *mut i64,
    cap: i64,
    err: *mut c_char,
    err_cap: i64,
) -> c_int {
    // SAFETY: module invariant (C++ hands over n_in fresh handles).
    let inputs = unsafe { take(inputs, n_in) };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let op = op_of(op)?;
        let f = op
            .forward(&inputs)
            .map_err(|e| format!("{}: {e}", op.name()))?;
        let cap = usize::try_from(cap).unwrap_or(0);
        if f.outputs.len() > cap || f.saved.len() > cap {
            return Err(format!(
                "{}: {} outputs and {} saved tensors, at most {cap} each",
                op.name(),
                f.outputs.len(),
                f.saved.len()
            ));
        }
        Ok(f)
    }));
    match result {
        Ok(Ok(f)) => {
            // SAFETY: `outputs` and `saved` have `cap` slots (checked above); C++ reads
            // the counts written next.
            unsafe {
                *n_out = f.outputs.len() as i64;
                *n_saved = f.saved.len() as i64;
                give(f.outputs.into_iter().map(Some).collect(), outputs);
                give(f.saved.into_iter().map(Some).collect(), saved);
            }
            0
        }
        Ok(Err(message)) => write_error(err, err_cap, &message),
        Err(panic) => write_error(err, err_cap, &panic_message(panic)),
    }
}

#[allow(clippy::too_many_arguments)]
extern "C" fn backward_callback(
    op: u64,
    saved: *const *mut C_tensor,
    n_saved: i64,
    grad_outputs: *const *mut C_tensor,
    n_grad_outputs: i64,
    grad_inputs: *mut *mut C_tensor,
    n_in: i64,
    err: *mut c_char,
    err_cap: i64,
) -> c_int {
    // SAFETY: module invariant (fresh handles, or null for an undefined gradient).
    let (saved, grads) = unsafe { (take(saved, n_saved), take(grad_outputs, n_grad_outputs)) };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let op = op_of(op)?;
        let g = op
            .backward(&saved, &grads)
            .map_err(|e| format!("{} backward: {e}", op.name()))?;
        if g.len() as i64 != n_in {
            return Err(format!(
                "{} backward: {} gradients for {n_in} inputs",
                op.name(),
                g.len()
            ));
        }
        Ok(g)
    }));
    match result {
        Ok(Ok(g)) => {
            // SAFETY: `grad_inputs` has n_in slots and g.len() == n_in.
            unsafe { give(g, grad_inputs) };
            0
        }
        Ok(Err(message)) => write_error(err, err_cap, &message),
        Err(panic) => write_error(err, err_cap, &panic_message(panic)),
    }
}
