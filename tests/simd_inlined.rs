//! Every SIMD intrinsic in our code is compiled into the function built for its instruction
//! set, not called: an intrinsic reached from code compiled without the instruction set (a
//! closure the compiler keeps apart from its `#[target_feature]` caller, an iterator's
//! outlined fold, a trait's default method) becomes a function call per instruction. That
//! happened in the bf16 prefill (0.59x the dense speed instead of 1.0x) and nothing else
//! failed: the results stay right, only slow. This disassembles the CLI binary (the
//! inference engine and every kernel) and lists the functions of this crate that call a
//! `core::arch` intrinsic, and every function that calls an AVX-512 one.

#[cfg(target_arch = "x86_64")]
#[test]
fn no_simd_intrinsic_is_called_out_of_line() {
    use std::collections::BTreeSet;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let bin = env!("CARGO_BIN_EXE_sparsetune");
    let child = Command::new("objdump").args(["-d", "--no-show-raw-insn", "-C", bin]).stdout(Stdio::piped()).spawn();
    let Ok(mut child) = child else {
        println!("skipped: objdump (binutils) is not installed");
        return;
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let (mut function, mut functions, mut offenders) = (String::new(), 0usize, BTreeSet::new());
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("objdump output");
        // "0000000000a65f70 <name>:" starts a function; "  addr:\tcall   addr <callee>" a call.
        if let Some(name) = line.strip_suffix(">:").and_then(|l| l.split_once(" <")).map(|(_, n)| n) {
            function = name.to_string();
            functions += 1;
        } else if line.contains("\tcall ") && line.contains("core::core_arch::") {
            // Ours, or an AVX-512 one from anywhere: only our kernels use AVX-512, and a
            // closure of theirs compiled inside a generic of core (`array::from_fn`) calls it
            // under core's name.
            let callee = line.rsplit_once(" <").map_or("", |(_, c)| c.trim_end_matches('>'));
            if function.contains("sparsetune::") || callee.contains("::avx512") {
                offenders.insert(format!("{function} calls {callee}"));
            }
        }
    }
    assert!(child.wait().expect("objdump ran").success(), "objdump failed on {bin}");
    assert!(functions > 1000, "objdump listed {functions} functions of {bin}: not a disassembly");
    let list: Vec<&String> = offenders.iter().take(20).collect();
    assert!(offenders.is_empty(), "{} SIMD intrinsics called out of line, e.g.:\n{list:#?}", offenders.len());
}
