//! Tape autodiff. The training step owns a [`Tape`]; ops called with `Some(&mut tape)`
//! record a backward closure when at least one input is tracked (a watched leaf or the
//! output of a recorded op). Without a tape nothing is recorded, so inference and
//! calibration cost no autodiff memory.
//!
//! Each recorded op declares what it holds for backward: [`Saved::Keep`] (a tensor kept
//! alive) or [`Saved::Recompute`] (re-derived in backward from frozen inputs, holding
//! nothing). [`Tape::saved_report`] lists them per scope, so tests can check that no layer
//! keeps an out × in weight alive.
//!
//! Gradients: [`Tape::backward`] walks the nodes in reverse, consuming each (its saved
//! tensors are freed as soon as its backward ran). Activation gradients are moved into
//! place by their first contribution (`=`) and summed when a tensor feeds several ops;
//! gradients of watched leaves accumulate into the caller's [`Grads`] (`+=`), so calling
//! backward for several micro-batches accumulates. [`checkpoint`] wraps a segment (one
//! decoder layer) that keeps only its input and re-runs forward during backward.

mod checkpoint;
mod profile;

pub use checkpoint::checkpoint;
pub use profile::{OpTime, Phase, Profile};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::tensor::TensorId;
use crate::{Error, Result, Shape, Tensor};

/// What a recorded op holds between forward and backward.
#[derive(Clone, Debug)]
pub enum Saved {
    /// A tensor kept alive until the op's backward runs.
    Keep(Tensor),
    /// Something re-derived in backward from frozen inputs; holds no memory. The text
    /// says what (e.g. "masked weight W⊙M + s·M⊙(BA)").
    Recompute(&'static str),
}

type BackwardFn = Box<dyn FnOnce(&mut BackwardCtx<'_>) -> Result<()>>;

struct Node {
    op: &'static str,
    scope: Option<Arc<str>>,
    /// One output, or several for [`Tape::record_multi`].
    outputs: Vec<TensorId>,
    inputs: Vec<Option<TensorId>>,
    saved: Vec<Saved>,
    backward: BackwardFn,
}

/// Gradients by tensor id.
#[derive(Default)]
pub struct Grads {
    map: HashMap<TensorId, Tensor>,
}

impl Grads {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gradient of `t`, if any.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }

    /// Removes and returns the gradient of `t`.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }

    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops every gradient.
    pub fn clear(&mut self) {
        self.map.clear()
    }

    /// Adds `g` to the gradient of `id`: moved in if there is none yet, otherwise summed
    /// (in place when the existing buffer is not shared).
    pub fn accumulate(&mut self, id: TensorId, g: Tensor) -> Result<()> {
        match self.map.get_mut(&id) {
            None => {
                self.map.insert(id, g);
            }
            Some(existing) => {
                existing.shape().expect_eq("gradient accumulation", g.shape())?;
                if existing.is_sole_owner() && !existing.same_storage(&g) {
                    crate::ops::elementwise::add_assign(existing, &g)?;
                } else {
                    *existing = crate::ops::elementwise::add_forward(existing, &g)?;
                }
            }
        }
        Ok(())
    }

    fn take(&mut self, id: TensorId) -> Option<Tensor> {
        self.map.remove(&id)
    }
}

/// What a backward closure sees: the output gradient, the saved tensors, which inputs
/// want a gradient, and where to put them.
pub struct BackwardCtx<'a> {
    /// The gradient of each output (`None`: that output did not influence the loss); a
    /// node recorded by [`Tape::record`] runs only with its one gradient present.
    grad_outs: Vec<Option<Tensor>>,
    saved: Vec<Saved>,
    inputs: &'a [Option<TensorId>],
    grads: &'a mut Grads,
}

impl BackwardCtx<'_> {
    /// Gradient of the op's output (of a single-output op: [`Tape::record`]).
    pub fn grad_out(&self) -> &Tensor {
        match self.grad_outs.first() {
            Some(Some(g)) => g,
            // Single-output nodes run only when their gradient exists (Tape::backward_from).
            _ => unreachable!("grad_out of a node without an output gradient"),
        }
    }

    /// Gradient of output `i` of a [`Tape::record_multi`] op, None when that output did not
    /// influence the loss.
    pub fn grad_out_at(&self, i: usize) -> Option<&Tensor> {
        self.grad_outs.get(i).and_then(Option::as_ref)
    }

    /// Whether input `i` wants a gradient.
    pub fn needs(&self, i: usize) -> bool {
        matches!(self.inputs.get(i), Some(Some(_)))
    }

    /// Saved tensor `i` (must be [`Saved::Keep`]).
    pub fn saved(&self, i: usize) -> Result<&Tensor> {
        match self.saved.get(i) {
            Some(Saved::Keep(t)) => Ok(t),
            _ => Err(Error::invalid(format!("backward: saved slot {i} holds no tensor"))),
        }
    }

    /// Contributes `g` to input `i`'s gradient (ignored when it wants none).
    pub fn add_grad(&mut self, i: usize, g: Tensor) -> Result<()> {
        if let Some(Some(id)) = self.inputs.get(i) {
            self.grads.accumulate(*id, g)?;
        }
        Ok(())
    }

    /// Contributes each given gradient to the input of its position (`None`: not computed,
    /// the input wants none). The usual tail of a backward closure.
    pub fn add_grads(&mut self, grads: impl IntoIterator<Item = Option<Tensor>>) -> Result<()> {
        for (i, g) in grads.into_iter().enumerate() {
            if let Some(g) = g {
                self.add_grad(i, g)?;
            }
        }
        Ok(())
    }

    /// Removes and returns the gradient input `i` has received so far (from the ops recorded
    /// after this one), for a backward that folds it into its own kernel and hands the sum
    /// back through [`Self::add_grad`]. None when there is none yet or the input wants none.
    pub fn take_grad(&mut self, i: usize) -> Option<Tensor> {
        match self.inputs.get(i) {
            Some(Some(id)) => self.grads.take(*id),
            _ => None,
        }
    }

    /// The gradient store itself, for ops that own a sub-tape (checkpoints).
    pub fn grads_mut(&mut self) -> &mut Grads {
        self.grads
    }
}

/// One entry of [`Tape::saved_report`].
#[derive(Clone, Debug)]
pub struct SavedEntry {
    /// Scope the op was recorded in (e.g. "layer 3").
    pub scope: Option<String>,
    /// Op name.
    pub op: &'static str,
    /// Shapes of the tensors kept alive, with their bytes.
    pub kept: Vec<(Shape, usize)>,
    /// What the op recomputes instead of keeping.
    pub recomputed: Vec<&'static str>,
}

/// The record of one forward pass, owned by the training step.
#[derive(Default)]
pub struct Tape {
    nodes: Vec<Node>,
    watched: HashSet<TensorId>,
    tracked: HashSet<TensorId>,
    scope: Option<Arc<str>>,
    profile: Option<Profile>,
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `t` as a leaf that wants a gradient (a trained parameter).
    pub fn watch(&mut self, t: &Tensor) {
        self.watched.insert(t.id());
        self.tracked.insert(t.id());
    }

    /// True when `t` is watched or the output of a recorded op.
    pub fn is_tracked(&self, t: &Tensor) -> bool {
        self.tracked.contains(&t.id())
    }

    /// Times every recorded op from now on, and every node in backward (see [`Profile`]).
    pub fn set_profile(&mut self, profile: Option<Profile>) -> Result<()> {
        if let Some(p) = &profile {
            p.mark()?;
        }
        self.profile = profile;
        Ok(())
    }

    /// Labels the ops recorded from now on (e.g. `Some("layer 3")`), for reports.
    pub fn set_scope(&mut self, scope: Option<&str>) {
        self.scope = scope.map(Arc::from);
    }

    /// Number of recorded ops.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Records `output = op(inputs)` if any input is tracked; `backward` will be called
    /// with the output's gradient and `saved`. Returns whether it was recorded.
    pub fn record(
        &mut self,
        op: &'static str,
        inputs: &[&Tensor],
        output: &Tensor,
        saved: Vec<Saved>,
        backward: impl FnOnce(&mut BackwardCtx<'_>) -> Result<()> + 'static,
    ) -> bool {
        self.record_multi(op, inputs, &[output], saved, backward)
    }

    /// [`Tape::record`] for an op with several outputs: `backward` runs when at least one of
    /// them has a gradient, and reads each through [`BackwardCtx::grad_out_at`].
    pub fn record_multi(
        &mut self,
        op: &'static str,
        inputs: &[&Tensor],
        outputs: &[&Tensor],
        saved: Vec<Saved>,
        backward: impl FnOnce(&mut BackwardCtx<'_>) -> Result<()> + 'static,
    ) -> bool {
        let ids: Vec<Option<TensorId>> =
            inputs.iter().map(|t| self.tracked.contains(&t.id()).then(|| t.id())).collect();
        if ids.iter().all(Option::is_none) {
            return false;
        }
        if let Some(p) = &self.profile {
            // Timing is best effort: a failed synchronisation surfaces at the next op.
            let _ = p.lap(op, Phase::Forward);
        }
        self.record_node(op, ids, outputs, saved, Box::new(backward));
        true
    }

    fn record_node(
        &mut self,
        op: &'static str,
        inputs: Vec<Option<TensorId>>,
        outputs: &[&Tensor],
        saved: Vec<Saved>,
        backward: BackwardFn,
    ) {
        let outputs: Vec<TensorId> = outputs.iter().map(|t| t.id()).collect();
        self.tracked.extend(outputs.iter().copied());
        self.nodes.push(Node { op, scope: self.scope.clone(), outputs, inputs, saved, backward });
    }

    /// What every recorded op holds, in recording order.
    pub fn saved_report(&self) -> Vec<SavedEntry> {
        self.nodes
            .iter()
            .map(|n| SavedEntry {
                scope: n.scope.as_deref().map(str::to_string),
                op: n.op,
                kept: n
                    .saved
                    .iter()
                    .filter_map(|s| match s {
                        Saved::Keep(t) => Some((t.shape().clone(), t.size_in_bytes())),
                        Saved::Recompute(_) => None,
                    })
                    .collect(),
                recomputed: n
                    .saved
                    .iter()
                    .filter_map(|s| match s {
                        Saved::Recompute(w) => Some(*w),
                        Saved::Keep(_) => None,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Backpropagates from a scalar `loss` (gradient 1), accumulating the gradients of
    /// watched tensors into `grads`. Consumes the tape.
    pub fn backward(self, loss: &Tensor, grads: &mut Grads) -> Result<()> {
        if loss.elem_count() != 1 {
            return Err(Error::BadShape {
                op: "backward",
                shape: loss.shape().clone(),
                msg: "the loss must be a scalar".into(),
            });
        }
        let one = Tensor::from_f32(vec![1.0], loss.shape().clone(), loss.dtype(), loss.device())?;
        self.backward_from(loss, one, grads)
    }

    /// Backpropagates `grad_out` from `output`. Consumes the tape.
    pub fn backward_from(mut self, output: &Tensor, grad_out: Tensor, grads: &mut Grads) -> Result<()> {
        output.shape().expect_eq("backward", grad_out.shape())?;
        // Intermediate gradients live in their own map; only watched leaves reach `grads`.
        let mut local = Grads::new();
        local.accumulate(output.id(), grad_out)?;
        if let Some(p) = &self.profile {
            p.mark()?;
        }
        while let Some(node) = self.nodes.pop() {
            let grad_outs: Vec<Option<Tensor>> = node.outputs.iter().map(|&id| local.take(id)).collect();
            if grad_outs.iter().all(Option::is_none) {
                continue; // no output influenced the loss
            }
            let mut ctx = BackwardCtx { grad_outs, saved: node.saved, inputs: &node.inputs, grads: &mut local };
            (node.backward)(&mut ctx)?;
            if let Some(p) = &self.profile {
                p.lap(node.op, Phase::Backward)?;
            }
        }
        for (id, g) in local.map {
            if self.watched.contains(&id) {
                grads.accumulate(id, g)?;
            }
        }
        Ok(())
    }

    fn watched_ids(&self) -> HashSet<TensorId> {
        self.watched.clone()
    }

    fn with_watched(watched: HashSet<TensorId>) -> Tape {
        Tape { tracked: watched.clone(), watched, ..Tape::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::{add, scale_forward};
    use crate::{DType, Device};

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_f32(v.to_vec(), [v.len()], DType::F32, &Device::cpu()).unwrap()
    }

    /// (a, b) = (2x, 3x) recorded as one node: its backward sees each output's gradient,
    /// None for an output the loss does not read, and is skipped when neither is read.
    fn two_outputs(tape: &mut Tape, x: &Tensor) -> (Tensor, Tensor) {
        let (a, b) = (scale_forward(x, 2.0).unwrap(), scale_forward(x, 3.0).unwrap());
        tape.record_multi("two", &[x], &[&a, &b], vec![], |ctx| {
            let mut dx = vec![0f32; ctx.grad_out_at(0).or(ctx.grad_out_at(1)).unwrap().elem_count()];
            for (i, s) in [(0, 2.0), (1, 3.0)] {
                if let Some(g) = ctx.grad_out_at(i) {
                    for (d, g) in dx.iter_mut().zip(g.to_f32_vec()?) {
                        *d += s * g;
                    }
                }
            }
            ctx.add_grad(0, Tensor::from_f32(dx, [2], DType::F32, &Device::cpu())?)
        });
        (a, b)
    }

    /// x's gradient [1, 10]·∂y/∂x for y = `combine`(a, b, x) on a tape holding the node
    /// (a, b) = (2x, 3x), x = [1, −2].
    fn grad_through_two(combine: impl Fn(&mut Tape, &Tensor, &Tensor, &Tensor) -> Tensor) -> Vec<f32> {
        let x = t(&[1.0, -2.0]);
        let mut tape = Tape::new();
        tape.watch(&x);
        let (a, b) = two_outputs(&mut tape, &x);
        let y = combine(&mut tape, &a, &b, &x);
        let mut grads = Grads::new();
        tape.backward_from(&y, t(&[1.0, 10.0]), &mut grads).unwrap();
        grads.get(&x).unwrap().to_f32_vec().unwrap()
    }

    #[test]
    fn multi_output_nodes_get_each_gradient() {
        // Both outputs read: dx = 2·da + 3·db.
        assert_eq!(grad_through_two(|tape, a, b, _| add(Some(tape), a, b).unwrap()), [5.0, 50.0]);
        // Only the second output read.
        assert_eq!(grad_through_two(|tape, _, b, _| add(Some(tape), b, b).unwrap()), [6.0, 60.0]);
        // Neither output read: the node is skipped.
        assert_eq!(grad_through_two(|tape, _, _, x| add(Some(tape), x, x).unwrap()), [2.0, 20.0]);
    }
}
