//! `acpd-demo-agent`: the demo ACP agent on stdin/stdout (see the library docs).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // On a worker, not on `block_on`'s thread: see `acpd demo-agent` (host/src/cli.rs).
    tokio::spawn(acpd_demo_agent::run_stdio()).await?
}
