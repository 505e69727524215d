//! Compiles every `cuda/*.cu` of the workspace as C++17 against `include/` (CUDA's model on
//! the CPU) together with `runtime/launch.cpp`, and generates the kernel name table:
//!   1. preprocess each `.cu` with `CUDA_CPU_SCAN`, where `__global__` and `__shared__` expand
//!      to markers, so kernels made by macros are found under their final names;
//!   2. write `kernels_<module>.cpp`: the unchanged `.cu` included after `cuda_cpu.h`, a
//!      page-aligned definition for each `extern __shared__` array (the launcher guards the
//!      bytes past what a launch asks for), and the module's tables of kernels and arrays;
//!   3. write `modules.cpp`, the list of modules the launcher searches.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

struct Module {
    name: String,
    kernels: Vec<String>,
    /// `extern __shared__` arrays as (element type, name).
    dynamic_shared: Vec<(String, String)>,
}

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let cuda_dir = crate_dir.join("../../cuda").canonicalize().expect("the workspace has a cuda/ folder");
    let include = crate_dir.join("include");
    let runtime = crate_dir.join("runtime");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for dir in [&cuda_dir, &include, &runtime] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }

    let mut sources: Vec<PathBuf> = fs::read_dir(&cuda_dir)
        .expect("reading cuda/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();

    let build = || {
        let mut b = cc::Build::new();
        b.cpp(true).std("c++17").include(&include).include(&runtime).include(&cuda_dir);
        // Fast kernels in every profile; `#pragma unroll` is nvcc's business.
        b.opt_level(2).flag("-Wno-unknown-pragmas");
        // No thread_local here has a dynamic initialiser. Without this, g++ calls the weak,
        // undefined TLS init function of an `extern __shared__` array declared inside a
        // function (rope.cu's `trig`) without checking it for null: a jump to address 0.
        b.flag_if_supported("-fno-extern-tls-init");
        b
    };

    let mut modules = Vec::new();
    let mut wrappers = Vec::new();
    for src in &sources {
        let name = src.file_stem().expect("a .cu file name").to_string_lossy().into_owned();
        let scan_file = out.join(format!("scan_{name}.cpp"));
        fs::write(&scan_file, format!("#include \"cuda_cpu.h\"\n#include {:?}\n", src.display().to_string()))
            .expect("writing the scan file");
        let expanded = build().define("CUDA_CPU_SCAN", None).file(&scan_file).expand();
        let module = scan(&name, &String::from_utf8_lossy(&expanded));
        wrappers.push(write_wrapper(&out, src, &module));
        modules.push(module);
    }
    let index = out.join("modules.cpp");
    fs::write(&index, index_source(&modules)).expect("writing modules.cpp");

    // The static library the test executables link: its TLS is theirs, hence static.
    build()
        .flag("-ftls-model=initial-exec")
        .files(&wrappers)
        .file(&index)
        .file(runtime.join("launch.cpp"))
        .compile("cuda_cpu");
    let mut driver = build();
    driver.files(&wrappers).file(&index).file(runtime.join("launch.cpp"));
    driver_library(&out, &runtime, driver);
}

/// `driver/libcuda_cpu.so`: the kernels, the launcher and `runtime/driver.cpp` (the CUDA
/// driver and cuBLAS entry points), with links named `libcuda.so` and `libcublas.so` to it,
/// for a process started with `driver/` in LD_LIBRARY_PATH (`cuda_cpu::DRIVER_DIR`). Only
/// the entry points are exported, so it cannot be confused with the static copy in the same
/// process; TLS is dynamic, as for any library opened with dlopen.
fn driver_library(out: &Path, runtime: &Path, mut build: cc::Build) {
    let dir = out.join("driver");
    build.file(runtime.join("driver.cpp")).pic(true).flag("-fvisibility=hidden").out_dir(out.join("driver-objects"));
    let objects = build.compile_intermediates();
    fs::create_dir_all(&dir).expect("creating the driver folder");
    let library = dir.join("libcuda_cpu.so");
    let status = build
        .get_compiler()
        .to_command()
        .arg("-shared")
        .arg("-o")
        .arg(&library)
        .args(&objects)
        .arg("-lpthread")
        .status()
        .expect("running the C++ compiler to link libcuda_cpu.so");
    assert!(status.success(), "linking {} failed", library.display());
    for name in ["libcuda.so", "libcublas.so"] {
        let link = dir.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("libcuda_cpu.so", &link).expect("linking the driver library's names");
    }
    println!("cargo:rustc-env=CUDA_CPU_DRIVER_DIR={}", dir.display());
}

/// Kernel names and `extern __shared__` arrays of one preprocessed `.cu` file.
fn scan(module: &str, text: &str) -> Module {
    let mut kernels = Vec::new();
    for (at, _) in text.match_indices("cuda_cpu_scan_global") {
        let before = text[..at].trim_end();
        assert!(before.ends_with("extern \"C\""), "cuda/{module}.cu: a __global__ kernel must be extern \"C\"");
        let after = text[at + "cuda_cpu_scan_global".len()..].trim_start();
        let after = after.strip_prefix("void").expect("kernels return void").trim_start();
        let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        assert!(after[name.len()..].trim_start().starts_with('('), "cuda/{module}.cu: cannot read kernel {name}");
        kernels.push(name);
    }
    let mut dynamic_shared = Vec::new();
    for (at, _) in text.match_indices("extern cuda_cpu_scan_shared") {
        let decl = &text[at + "extern cuda_cpu_scan_shared".len()..];
        let decl = decl[..decl.find(';').expect("a declaration ends with ;")].trim();
        let decl = decl.strip_suffix("[]").expect("extern __shared__ declares an array of unknown size").trim_end();
        let (ty, name) = decl.rsplit_once(char::is_whitespace).expect("extern __shared__ <type> <name>[]");
        let entry = (ty.trim().to_string(), name.to_string());
        if !dynamic_shared.contains(&entry) {
            dynamic_shared.push(entry);
        }
    }
    Module { name: module.to_string(), kernels, dynamic_shared }
}

fn write_wrapper(out: &Path, src: &Path, m: &Module) -> PathBuf {
    let mut s = format!(
        "// Generated by crates/cuda-cpu/build.rs from cuda/{}.cu.\n#include \"cuda_cpu.h\"\n#include {:?}\n\
         #include \"table.h\"\n",
        m.name,
        src.display().to_string()
    );
    // Each array gets its own page-aligned area (with a page to spare for the guard the
    // launcher puts after the launch's bytes), and a function giving this OS thread's copy.
    for (i, (ty, name)) in m.dynamic_shared.iter().enumerate() {
        writeln!(
            s,
            "alignas(CUDA_CPU_PAGE) thread_local {ty} {name}[CUDA_CPU_SHARED_AREA / sizeof({ty})];\n\
             static void* cuda_cpu_shared_{i}() {{ return (void*){name}; }}"
        )
        .unwrap();
    }
    writeln!(s, "cuda_cpu::Kernel cuda_cpu_kernels_{}[] = {{", m.name).unwrap();
    for k in &m.kernels {
        writeln!(s, "    CUDA_CPU_KERNEL({k}),").unwrap();
    }
    s.push_str("};\n");
    writeln!(s, "extern const cuda_cpu::SharedArray cuda_cpu_shared_{}[] = {{", m.name).unwrap();
    for (i, (_, name)) in m.dynamic_shared.iter().enumerate() {
        writeln!(s, "    {{{name:?}, &cuda_cpu_shared_{i}}},").unwrap();
    }
    s.push_str("    {nullptr, nullptr},\n};\n");
    let path = out.join(format!("kernels_{}.cpp", m.name));
    fs::write(&path, s).expect("writing a kernel table");
    path
}

fn index_source(modules: &[Module]) -> String {
    let mut s =
        String::from("// Generated by crates/cuda-cpu/build.rs: every module of cuda/.\n#include \"table.h\"\n");
    for m in modules {
        writeln!(s, "extern cuda_cpu::Kernel cuda_cpu_kernels_{}[];", m.name).unwrap();
        writeln!(s, "extern const cuda_cpu::SharedArray cuda_cpu_shared_{}[];", m.name).unwrap();
    }
    s.push_str("extern const cuda_cpu::Module cuda_cpu_modules[] = {\n");
    for m in modules {
        writeln!(
            s,
            "    {{{:?}, cuda_cpu_kernels_{}, {}, cuda_cpu_shared_{}}},",
            m.name,
            m.name,
            m.kernels.len(),
            m.name
        )
        .unwrap();
    }
    writeln!(s, "}};\nextern const size_t cuda_cpu_module_count = {};", modules.len()).unwrap();
    s
}
