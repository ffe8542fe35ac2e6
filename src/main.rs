fn main() -> std::process::ExitCode {
    zgsz_agent::cli::main()
}
