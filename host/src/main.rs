use std::process::ExitCode;

fn main() -> ExitCode {
    acpd::cli::main()
}
