fn main() -> std::process::ExitCode {
    ferrotron::cli::main()
}
