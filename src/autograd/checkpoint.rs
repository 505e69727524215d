//! Activation checkpointing: run a segment (one decoder layer) without recording, keep
//! only its input, and in backward re-run it on a sub-tape and backpropagate through that.
//! Memory held per segment between forward and backward: its input, nothing else.

use std::collections::HashSet;

use super::{Saved, Tape};
use crate::{Result, Tensor};

/// `f(tape, input)` with checkpointing. With `tape == None` this is just `f(None, input)`.
/// `f` must be deterministic (it runs twice) and may use any watched parameters: their
/// gradients reach the caller's `Grads` during backward.
pub fn checkpoint<F>(tape: Option<&mut Tape>, input: &Tensor, scope: &'static str, f: F) -> Result<Tensor>
where
    F: Fn(Option<&mut Tape>, &Tensor) -> Result<Tensor> + 'static,
{
    let Some(tape) = tape else {
        return f(None, input);
    };
    let output = f(None, input)?;
    let mut watched: HashSet<_> = tape.watched_ids();
    let input_tracked = tape.is_tracked(input);
    if input_tracked {
        watched.insert(input.id());
    }
    if watched.is_empty() {
        return Ok(output);
    }
    let inputs = vec![input_tracked.then(|| input.id())];
    let saved = vec![Saved::Keep(input.clone()), Saved::Recompute(scope)];
    let out_id_shape = output.shape().clone();
    tape.record_node(
        "checkpoint",
        inputs,
        &[&output],
        saved,
        Box::new(move |ctx| {
            let x = ctx.saved(0)?.clone();
            let mut sub = Tape::with_watched(watched);
            sub.set_scope(Some(scope));
            let y = f(Some(&mut sub), &x)?;
            y.shape().expect_eq("checkpoint recompute", &out_id_shape)?;
            let g = ctx.grad_out().clone();
            sub.backward_from(&y, g, ctx.grads_mut())
        }),
    );
    Ok(output)
}
