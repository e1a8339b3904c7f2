//! Per-request cost of telemetry: `POST /session/:id/prompt` admissions per second with
//! telemetry off (`OTEL_SDK_DISABLED=true`) vs on (spans, metrics and logs exported over
//! OTLP/HTTP to a receiver in this process, plus the trace view), measured in one run.
//!
//! `cargo bench -p acpd-tests --bench admission` (ACPD_BENCH_PROMPTS sets the count per mode).

use acpd_tests::otlp::{Protocol, Receiver};
use acpd_tests::*;
use serde_json::json;
use std::time::Instant;

const CLIENTS: usize = 8;

async fn admissions_per_second(d: &Daemon, prompts: usize) -> anyhow::Result<f64> {
    let mut sessions = Vec::new();
    for _ in 0..CLIENTS {
        sessions.push(d.create_session().await?);
    }
    let run = |count: usize| {
        let tasks: Vec<_> = sessions
            .iter()
            .cloned()
            .map(|s| {
                let (http, url) = (d.http.clone(), d.url(&format!("/session/{}/prompt", s.id)));
                tokio::spawn(async move {
                    for _ in 0..count / CLIENTS {
                        let r = http
                            .post(&url)
                            .header("X-Qwen-Client-Id", &s.client_id)
                            .json(&json!({"prompt": [{"type": "text", "text": "hi"}]}))
                            .send()
                            .await?;
                        anyhow::ensure!(r.status() == 202, "admission failed: {}", r.status());
                    }
                    Ok(())
                })
            })
            .collect();
        async move {
            for t in tasks {
                t.await??;
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    run(CLIENTS * 20).await?; // warm-up: connections, child, first allocations
    let started = Instant::now();
    run(prompts).await?;
    Ok(prompts as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let prompts: usize = std::env::var("ACPD_BENCH_PROMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let config = "[limits]\nmax_pending_prompts_per_session = 1000000\n";
    let off = {
        let d = Daemon::builder()
            .config(config)
            .env("OTEL_SDK_DISABLED", "true")
            .start()
            .await?;
        admissions_per_second(&d, prompts).await?
    };
    let rx = Receiver::start(Protocol::HttpProtobuf).await?;
    let on = {
        let d = Daemon::builder()
            .config(config)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", rx.protocol_env())
            .start()
            .await?;
        admissions_per_second(&d, prompts).await?
    };
    println!("admission, {prompts} prompts, {CLIENTS} concurrent clients:");
    println!("  telemetry off: {off:>8.0} req/s");
    println!("  telemetry on:  {on:>8.0} req/s  (OTLP/HTTP to an in-process receiver)");
    println!("  on/off ratio:  {:.3}", on / off);
    Ok(())
}
