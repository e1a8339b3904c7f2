//! The session journal's write cost per event and disk bytes per 1,000 events, in process
//! (`cargo bench -p acpd --bench journal`), for both fsync policies; what a replay that reaches
//! past a session's in-memory ring costs (it reads the journal); and the start-up recovery of
//! 1,000 journaled sessions. BENCHMARKS.md quotes it.

use acpd::config::Fsync;
use acpd::journal::{AgentCommand, Header, Journal, JournalConfig};
use std::time::{Duration, Instant};

fn cfg(fsync: Fsync) -> JournalConfig {
    JournalConfig {
        fsync,
        fsync_interval: Duration::from_millis(200),
        max_session_bytes: 1 << 30,
        max_total_bytes: 8 << 30,
        retention: Duration::from_secs(86_400),
        max_sessions: 100_000,
    }
}

fn header(id: &str) -> Header {
    Header {
        v: 1,
        session_id: id.into(),
        agent_session_id: id.into(),
        workspace_id: "0123456789abcdef".into(),
        workspace_cwd: "/workspace".into(),
        created_at_ms: 0,
        epoch: uuid_like(id),
        agent: AgentCommand {
            program: "/usr/local/bin/acpd".into(),
            args: vec!["demo-agent".into()],
        },
        boot_id: String::new(),
        fsync: "interval".into(),
    }
}

fn uuid_like(id: &str) -> String {
    format!("{id:0>36}")
}

/// The `q` quantile of sorted nanoseconds, in microseconds.
fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

/// A typical streamed chunk: an `agent_message_chunk` session update as the bus frames it.
fn frame(id: u64) -> Vec<u8> {
    format!(
        "id: {id}\nevent: session_update\ndata: {{\"id\":{id},\"v\":1,\"type\":\"session_update\",\"data\":{{\"sessionId\":\"3f1c2a8e-2b7d-4c1e-9a55-0c6f3e1d2b4a\",\"update\":{{\"sessionUpdate\":\"agent_message_chunk\",\"content\":{{\"type\":\"text\",\"text\":\"Hello from the demo agent. You said: \"}}}}}},\"promptId\":\"8c0d3b1e-7a6f-4f2e-b1d9-5e4c3a2b1f0e\",\"originatorClientId\":\"client_5b7e9c1d-2f4a-4e6b-8d0c-1a3e5f7b9d2c\",\"_meta\":{{\"serverTimestamp\":1796323026712}}}}\n\n"
    )
    .into_bytes()
}

fn main() -> std::io::Result<()> {
    let base = std::env::temp_dir().join(format!("acpd-journal-bench-{}", std::process::id()));
    let frame_len = frame(1).len();
    for (fsync, n) in [(Fsync::Interval, 200_000u64), (Fsync::Always, 2_000)] {
        let dir = base.join(fsync.as_str());
        let (j, _, _) = Journal::open(&dir, cfg(fsync))?;
        let s = j.create(header("bench"), serde_json::Value::Null);
        let frames: Vec<Vec<u8>> = (1..=n).map(frame).collect();
        let mut lat = Vec::with_capacity(n as usize);
        let started = Instant::now();
        for (i, f) in frames.iter().enumerate() {
            let t = Instant::now();
            s.append_event(i as u64 + 1, f);
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let total = started.elapsed();
        lat.sort_unstable();
        let p = |q: f64| quantile_us(&lat, q);
        let bytes = s.state().bytes;
        println!(
            "journal write ({}, {n} events of {frame_len} B): mean {:.2} us, p50 {:.2} us, p99 {:.2} us; {:.0} bytes per 1,000 events ({:.0} of them frame bytes)",
            fsync.as_str(),
            total.as_secs_f64() * 1e6 / n as f64,
            p(0.50),
            p(0.99),
            bytes as f64 * 1000.0 / n as f64,
            frame_len as f64 * 1000.0,
        );
        j.finish();
    }
    // A reconnect that reaches past the ring reads the journal: the last `k` of a session's
    // 5,000 events (the file is in the page cache, as it is a moment after it was written).
    {
        let (j, _, _) = Journal::open(&base.join("replay"), cfg(Fsync::Interval))?;
        let s = j.create(header("replay"), serde_json::Value::Null);
        let last = 5_000u64;
        for id in 1..=last {
            s.append_event(id, &frame(id));
        }
        for k in [100u64, 370, 1_000] {
            let mut lat: Vec<u64> = (0..300)
                .map(|_| {
                    let t = Instant::now();
                    let got = s.read_frames(last - k + 1..=last);
                    assert_eq!(got.len() as u64, k, "replay of {k} events");
                    t.elapsed().as_nanos() as u64
                })
                .collect();
            lat.sort_unstable();
            let p = |q: f64| quantile_us(&lat, q);
            println!(
                "journal replay (the last {k} of {last} events of {frame_len} B): p50 {:.0} us, p99 {:.0} us",
                p(0.50),
                p(0.99),
            );
        }
        j.finish();
    }
    // Start-up recovery: 1,000 sessions of 50 events each, scanned and checked.
    let dir = base.join("recovery");
    {
        let (j, _, _) = Journal::open(&dir, cfg(Fsync::Interval))?;
        for k in 0..1000 {
            let s = j.create(
                header(&format!("session-{k}")),
                serde_json::json!({"displayName": "x"}),
            );
            for id in 1..=50 {
                s.append_event(id, &frame(id));
            }
        }
        j.finish();
    }
    let t = Instant::now();
    let (_j, restored, report) = Journal::open(&dir, cfg(Fsync::Interval))?;
    println!(
        "journal recovery: {} sessions, {} events, {} bytes scanned and checked in {:.1} ms",
        restored.len(),
        report.events,
        report.bytes,
        t.elapsed().as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
