//! `acpd-demo-agent`: the demo ACP agent on stdin/stdout (see the library docs).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    acpd_demo_agent::run_stdio().await
}
