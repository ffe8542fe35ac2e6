// Static (musl) builds use mimalloc: musl's own malloc serialises the
// agent's threads on one lock and costs more CPU under load (BENCHMARKS.md,
// "Static builds"). glibc builds keep glibc's malloc. The `libc-malloc`
// feature keeps musl's malloc, for that comparison.
#[cfg(all(target_env = "musl", not(feature = "libc-malloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    zgsz_agent::cli::main()
}
