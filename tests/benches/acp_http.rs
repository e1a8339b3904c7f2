//! Prompt round trip over `/acp` against REST and against the agent's own stdio, in one run:
//! `cargo bench -p acpd-tests --bench acp_http` (release daemon; BENCHMARKS.md).
//!
//! Each path runs the demo agent's `bench 4` turn (four chunks, no delay) from the client's
//! send to the client holding the turn's end:
//! - stdio: an ACP client on the pipes of a demo agent it spawned itself (no daemon);
//! - REST: `POST /session/{id}/prompt`, then `turn_complete` on the session's SSE stream;
//! - `/acp` HTTP+SSE and `/acp` WebSocket: the official client's `session/prompt` answer.
//!
//! Telemetry and plugins are off (the transport is measured, not the export). The paths take
//! turns in rounds, so drift on this shared machine spreads over all of them.

use acpd_tests::*;
use agent_client_protocol::v1::schema::{
    ContentBlock, InitializeRequest, NewSessionRequest, PromptRequest, TextContent,
};
use agent_client_protocol::{ByteStreams, Client, ConnectTo};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

const ROUNDS: usize = 10;
const TURNS_PER_ROUND: usize = 100;
const WARMUP: usize = 50;
const PROMPT: &str = "bench 4";

type Job = (usize, oneshot::Sender<Result<Vec<Duration>>>);

/// An ACP client on `transport` in its own task: each job runs that many turns and returns
/// their round trips.
async fn acp_runner(
    transport: impl ConnectTo<Client> + 'static,
    cwd: &Path,
) -> Result<mpsc::Sender<Job>> {
    let (tx, mut rx) = mpsc::channel::<Job>(1);
    let (ready_tx, ready_rx) = oneshot::channel();
    let cwd = cwd.to_path_buf();
    tokio::spawn(async move {
        let r = Client
            .v1()
            .connect_with(transport, async move |cx| {
                let setup = async {
                    cx.send_request(InitializeRequest::new(
                        agent_client_protocol::schema::ProtocolVersion::V1,
                    ))
                    .block_task()
                    .await?;
                    let s = cx
                        .send_request(NewSessionRequest::new(&cwd))
                        .block_task()
                        .await?;
                    Ok::<_, agent_client_protocol::Error>(s.session_id)
                };
                let sid = match tokio::time::timeout(WAIT, setup).await {
                    Ok(Ok(sid)) => sid,
                    Ok(Err(e)) => {
                        let _ = ready_tx.send(Err(anyhow!("setup: {e:?}")));
                        return Ok(());
                    }
                    Err(_) => {
                        let _ = ready_tx.send(Err(anyhow!("setup timed out")));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Some((n, reply)) = rx.recv().await {
                    let mut out = Vec::with_capacity(n);
                    let mut failed = None;
                    for _ in 0..n {
                        let req = PromptRequest::new(
                            sid.clone(),
                            vec![ContentBlock::Text(TextContent::new(PROMPT))],
                        );
                        let t = Instant::now();
                        match tokio::time::timeout(WAIT, cx.send_request(req).block_task()).await {
                            Ok(Ok(_)) => out.push(t.elapsed()),
                            Ok(Err(e)) => {
                                failed = Some(anyhow!("prompt: {e:?}"));
                                break;
                            }
                            Err(_) => {
                                failed = Some(anyhow!("prompt timed out"));
                                break;
                            }
                        }
                    }
                    let _ = reply.send(failed.map_or(Ok(out), Err));
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            eprintln!("ACP connection ended: {e:?}");
        }
    });
    ready_rx.await.context("runner gone")??;
    Ok(tx)
}

async fn run(tx: &mpsc::Sender<Job>, n: usize) -> Result<Vec<Duration>> {
    let (reply, rx) = oneshot::channel();
    tx.send((n, reply))
        .await
        .map_err(|_| anyhow!("runner gone"))?;
    rx.await.context("runner gone")?
}

/// The REST path: prompt, then the turn's `turn_complete` on an open SSE stream.
async fn rest_turns(d: &Daemon, s: &SessionRef, sse: &mut Sse, n: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = d.prompt(s, PROMPT).await?;
        if r.status != 202 {
            bail!("prompt -> {} {}", r.status, r.body);
        }
        let pid = r.body["promptId"].as_str().context("promptId")?.to_string();
        sse.until(WAIT, |f| {
            f.event == "turn_complete" && f.data["data"]["promptId"] == pid.as_str()
        })
        .await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> Result<()> {
    let d = Daemon::builder()
        .env("OTEL_SDK_DISABLED", "true")
        .args(&["--no-plugins"])
        .config("[limits]\nevent_ring = 256\n")
        .start()
        .await?;
    let cwd = d.ws_path.clone();

    // The agent on its own pipes, as the daemon runs it (same binary, same command).
    let mut child = tokio::process::Command::new(acpd_bin())
        .arg("demo-agent")
        .current_dir(&cwd)
        .env("OTEL_SDK_DISABLED", "true")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take().context("stdin")?;
    let stdout = child.stdout.take().context("stdout")?;
    let stdio = acp_runner(
        ByteStreams::new(stdin.compat_write(), stdout.compat()),
        &cwd,
    )
    .await?;
    let sse_client = acp_runner(
        agent_client_protocol_http::HttpClient::builder_with_endpoint(d.url("/acp")).build()?,
        &cwd,
    )
    .await?;
    let ws_client = acp_runner(
        agent_client_protocol_http::HttpClient::builder_with_endpoint(
            d.url("/acp").replacen("http://", "ws://", 1),
        )
        .build()?,
        &cwd,
    )
    .await?;
    let s = d
        .create_session_with(json!({"sessionScope": "thread"}))
        .await?;
    let mut sse = d.events(&s, None, None).await?;

    let names = [
        "stdio (no daemon)",
        "REST + SSE",
        "/acp HTTP+SSE",
        "/acp WebSocket",
    ];
    let mut all: [Vec<Duration>; 4] = Default::default();
    for round in 0..=ROUNDS {
        let n = if round == 0 { WARMUP } else { TURNS_PER_ROUND };
        let got = [
            run(&stdio, n).await?,
            rest_turns(&d, &s, &mut sse, n).await?,
            run(&sse_client, n).await?,
            run(&ws_client, n).await?,
        ];
        if round > 0 {
            for (a, g) in all.iter_mut().zip(got) {
                a.extend(g);
            }
        }
    }
    let base = {
        let mut v = all[0].clone();
        v.sort();
        pct(&v, 0.5)
    };
    println!(
        "prompt round trip, `{PROMPT}`, {} turns per path ({ROUNDS} rounds of {TURNS_PER_ROUND}, after {WARMUP} warm-up)",
        ROUNDS * TURNS_PER_ROUND
    );
    println!("| path | p50 µs | p90 µs | p99 µs | p50 over stdio µs |");
    println!("|---|---|---|---|---|");
    for (name, v) in names.iter().zip(all.iter_mut()) {
        v.sort();
        let p50 = pct(v, 0.5);
        println!(
            "| {name} | {p50:.0} | {:.0} | {:.0} | {:.0} |",
            pct(v, 0.9),
            pct(v, 0.99),
            p50 - base
        );
    }
    Ok(())
}
