//! The whole model on CUDA against the CPU reference: logits, loss and every weight
//! gradient of a tiny random LLaMA (f32 and bf16), with and without checkpointing.
//! Per-op CUDA checks live next to each op (src/ops/*/mod.rs). Skips without a GPU.

mod common;

use sparsetune::device::cuda_for_tests;
use sparsetune::model::llama::ForwardOptions;
use sparsetune::testing::assert_close;
use sparsetune::{DType, Device, Grads, Tape, Tensor};

#[test]
fn tiny_llama_forward_and_backward_match_cpu() {
    let Some(gpu) = cuda_for_tests("tiny_llama_forward_and_backward_match_cpu") else { return };
    let cpu = Device::cpu();
    for (dtype, atol, rtol) in [(DType::F32, 1e-4, 1e-3), (DType::BF16, 3e-2, 3e-2)] {
        for checkpoint_layers in [false, true] {
            let m = common::tiny_model(dtype, &cpu, 21);
            let mg = m.to(&gpu, dtype).unwrap();
            let (ids, targets) = common::tokens(2, 13, m.config.vocab_size, &cpu);
            let (idg, tg) = (ids.to_device(&gpu).unwrap(), targets.to_device(&gpu).unwrap());
            let opts = ForwardOptions { checkpoint_layers };
            let what = format!("tiny llama {dtype} checkpoint={checkpoint_layers}");
            let l = m.forward(None, &ids, opts).unwrap().to_f32_vec().unwrap();
            let lg = mg.forward(None, &idg, opts).unwrap().to_f32_vec().unwrap();
            assert_close(&format!("{what} logits"), &lg, &l, atol, rtol);

            let run = |model: &sparsetune::model::llama::Llama, ids: &Tensor, t: &Tensor| {
                let mut tape = Tape::new();
                let ws: Vec<Tensor> = model.named_tensors().into_iter().map(|(_, t)| t.clone()).collect();
                for w in &ws {
                    tape.watch(w);
                }
                let loss = model.loss(Some(&mut tape), ids, t, opts).unwrap();
                let mut grads = Grads::new();
                tape.backward(&loss, &mut grads).unwrap();
                let gs: Vec<Vec<f32>> = ws.iter().map(|w| grads.get(w).unwrap().to_f32_vec().unwrap()).collect();
                (loss.to_scalar_f32().unwrap(), gs)
            };
            let (loss_c, grads_c) = run(&m, &ids, &targets);
            let (loss_g, grads_g) = run(&mg, &idg, &tg);
            assert_close(&format!("{what} loss"), &[loss_g], &[loss_c], atol, rtol);
            for ((part, _), (gc, gg)) in m.named_tensors().into_iter().zip(grads_c.iter().zip(&grads_g)) {
                assert_close(&format!("{what} grad {part:?}"), gg, gc, atol, rtol * 3.0);
            }
        }
    }
}
