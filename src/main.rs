//! The `sparsetune` binary: see `sparsetune --help`.

fn main() {
    std::process::exit(sparsetune::cli::main());
}
