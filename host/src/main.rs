use std::process::ExitCode;

/// The bench build counts allocations (`acpd::alloc_count`); the daemon keeps the system allocator.
#[cfg(feature = "alloc-count")]
#[global_allocator]
static ALLOC: acpd::alloc_count::Counting = acpd::alloc_count::Counting;

fn main() -> ExitCode {
    acpd::cli::main()
}
