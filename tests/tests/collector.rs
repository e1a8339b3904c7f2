//! A collector that is unreachable, never answers, or answers 503, while prompts keep coming:
//! requests stay fast, memory stays bounded, what cannot be exported is counted as dropped,
//! and export resumes when the collector comes back. `ACPD_OUTAGE_SECS` sets how long each
//! outage lasts (default 3 s; longer runs by hand, see RELIABILITY.md).

use acpd_tests::load::{rss_kib, spans_dropped};
use acpd_tests::otlp::{Protocol, Receiver};
use acpd_tests::*;
use anyhow::{Context, Result};
use std::time::{Duration, Instant};

enum Outage {
    Unreachable,
    Hanging,
    Failing,
}

async fn collector_outage(outage: Outage) -> Result<()> {
    let rx = match outage {
        Outage::Unreachable => None,
        Outage::Hanging => Some(Receiver::start_hanging(Protocol::HttpProtobuf).await?),
        Outage::Failing => Some(Receiver::start_failing(Protocol::HttpProtobuf, 503).await?),
    };
    let endpoint = match &rx {
        Some(rx) => rx.endpoint(),
        None => {
            // A port that was just free: nothing listens there.
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            format!("http://{}", l.local_addr()?)
        }
    };
    let d = Daemon::builder()
        .config("[limits]\nmax_pending_prompts_per_session = 1000\n")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "256")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .start()
        .await?;
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    // Sustained load: each turn makes 11 spans, far more than the queue holds.
    let secs: u64 = std::env::var("ACPD_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut admit = Vec::new();
    let started = Instant::now();
    let mut turns = 0;
    let mut peak_rss = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        let t0 = Instant::now();
        let r = d.prompt(&s, "bench 2 8").await?;
        admit.push(t0.elapsed());
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.body["promptId"].as_str().context("promptId")?.to_string();
        let frames = sse.until_turn_end(&id).await?;
        assert_eq!(frames.last().unwrap().event, "turn_complete");
        turns += 1;
        if turns % 50 == 0 {
            peak_rss = peak_rss.max(rss_kib(d.pid())?);
        }
    }
    admit.sort();
    let p99 = admit[admit.len() * 99 / 100];
    // Nothing reaches the collector during the outage: what the queue could not hold, and the
    // batches the collector did not take, are both counted.
    let queue_full = spans_dropped(&d, "export_queue").await?;
    let failed = spans_dropped(&d, "export_failed").await?;
    let dropped = queue_full + failed;
    let rss = rss_kib(d.pid())?.max(peak_rss);
    eprintln!(
        "{secs} s outage, {turns} turns; admission p50 {:?} p99 {p99:?}; spans dropped: {queue_full} at the queue, {failed} in failed exports; peak RSS {} MiB",
        admit[admit.len() / 2],
        rss / 1024
    );
    assert!(turns as u64 >= 6 * secs, "only {turns} turns in {secs} s");
    assert!(p99 < Duration::from_millis(250), "admission p99 {p99:?}");
    assert!(
        dropped >= turns as u64,
        "{dropped} spans counted as lost for {turns} turns of 11 spans each"
    );
    assert!(rss < 200 * 1024, "RSS {rss} KiB");

    if let Some(rx) = rx {
        // The collector comes back. Spans queued during the outage drain first, and new ones
        // find room once they have: keep prompting until a turn from after the recovery is in.
        rx.recover();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut after = Vec::new();
        loop {
            let r = d.prompt(&s, "after the outage").await?;
            let id = r.body["promptId"].as_str().context("promptId")?.to_string();
            sse.until_turn_end(&id).await?;
            after.push(id);
            let arrived = rx.spans().iter().any(|sp| {
                sp.name == "bridge prompt.dispatch"
                    && sp
                        .attr_str("acpd.prompt.id")
                        .is_some_and(|p| after.iter().any(|a| a == p))
            });
            if arrived {
                eprintln!("export resumed after {} prompts", after.len());
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "export did not resume within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_collector_costs_requests_nothing() -> Result<()> {
    collector_outage(Outage::Unreachable).await
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_requests_nothing_and_export_resumes() -> Result<()> {
    collector_outage(Outage::Hanging).await
}

#[tokio::test]
async fn a_collector_answering_503_costs_requests_nothing_and_export_resumes() -> Result<()> {
    collector_outage(Outage::Failing).await
}
