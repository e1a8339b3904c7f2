//! The load harness's paced floor (`acpd_tests::load::floor_paced`, BENCHMARKS.md): the least a
//! daemon can do with a prompt, in a process of its own, with an agent of its own.
//!
//! `floor-daemon serve <readers> <dir>` listens on 127.0.0.1, prints `READY <port>` and starts
//! `<readers>` reader processes (itself, `read <file>`). Each `POST /<i>` writes its body, one
//! line, into reader `i`'s stdin and answers 202: no session, no event, no span, no plugin. It
//! serves with the same stack as acpd (axum on a multi-threaded tokio runtime, a worker per CPU)
//! and ends at its own stdin's end, once its readers have written their files.
//!
//! `floor-daemon read <file>`: for each line read from stdin, the wall-clock time of the read
//! minus the time the line carries (ns); one a line into `<file>` at stdin's end.
//!
//! Two settings take it a step towards acpd, so the gap between the floor and the daemon can be
//! split (BENCHMARKS.md, "Round twenty-one"):
//! - `ACPD_FLOOR_AGENT_LIKE=1`: each reader reads as the demo agent does, from a worker of a
//!   multi-threaded tokio runtime, at acpd's default agent niceness (10; another with
//!   `ACPD_FLOOR_READER_NICE=<n>`, which also applies to the plain readers, nice 0 otherwise);
//! - `ACPD_FLOOR_REALTIME=1`: the server's runtime threads run `SCHED_RR` 1, as acpd's serving
//!   threads do by default where permitted (it says when not).

use anyhow::{Context, bail};
use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    routing::post,
};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::Mutex;

/// The longest a server waits for its stdin's end: far above any paced row (a row takes seconds).
const LIFELINE: Duration = Duration::from_secs(15 * 60);

/// acpd's default `agent.nice`.
const AGENT_NICE: i32 = 10;

type Pipes = Arc<Vec<Mutex<Option<ChildStdin>>>>;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.get(2), args.get(3)) {
        (Some("serve"), Some(n), Some(dir)) => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if setting("ACPD_FLOOR_REALTIME") {
                if !acpd_tests::set_thread_realtime(true) {
                    eprintln!("floor-daemon: real-time not permitted to this user, ran without");
                }
                rt.on_thread_start(|| {
                    acpd_tests::set_thread_realtime(true);
                });
            }
            rt.enable_all()
                .build()?
                .block_on(serve(n.parse().context("readers")?, dir.into()))
        }
        (Some("read"), Some(file), None) => {
            let agent_like = setting("ACPD_FLOOR_AGENT_LIKE");
            let nice = match std::env::var("ACPD_FLOOR_READER_NICE") {
                Ok(n) => n.trim().parse().context("ACPD_FLOOR_READER_NICE")?,
                Err(_) if agent_like => AGENT_NICE,
                Err(_) => 0,
            };
            // SAFETY: `nice` changes this process's niceness; no memory is involved.
            unsafe { nix::libc::nice(nice) };
            if !agent_like {
                return read(file);
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(async { tokio::spawn(read_async(file.clone())).await? })
        }
        _ => bail!("usage: floor-daemon serve <readers> <dir> | floor-daemon read <file>"),
    }
}

fn read(file: &str) -> anyhow::Result<()> {
    use std::io::BufRead;
    let mut took = Took::default();
    for line in std::io::stdin().lock().lines() {
        took.note(&line?)?;
    }
    took.write(file)
}

/// A reader's notes: for each line, when it was read minus the time it carries (ns).
#[derive(Default)]
struct Took(String);

impl Took {
    /// Notes `line`, just read.
    fn note(&mut self, line: &str) -> anyhow::Result<()> {
        let now = acpd_tests::load::wall_ns();
        let sent: u128 = line.trim().parse().context("a line without a time")?;
        self.0.push_str(&format!("{}\n", now.saturating_sub(sent)));
        Ok(())
    }

    /// One a line into `file`.
    fn write(self, file: &str) -> anyhow::Result<()> {
        std::fs::write(file, self.0).with_context(|| format!("write {file}"))
    }
}

fn setting(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == "1")
}

/// [`read`] as the demo agent reads its stdin: lines from the pipe registered with the
/// runtime's I/O driver, on a worker.
async fn read_async(file: String) -> anyhow::Result<()> {
    use std::os::fd::AsFd as _;
    use tokio::io::AsyncBufReadExt;
    let pipe = std::io::stdin().as_fd().try_clone_to_owned()?;
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe)?;
    let mut lines = tokio::io::BufReader::new(pipe).lines();
    let mut took = Took::default();
    while let Some(line) = lines.next_line().await? {
        took.note(&line)?;
    }
    took.write(&file)
}

async fn serve(readers: usize, dir: std::path::PathBuf) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let (mut children, mut pipes) = (Vec::new(), Vec::new());
    for i in 0..readers {
        let mut child = tokio::process::Command::new(&me)
            .arg("read")
            .arg(dir.join(format!("{i}.txt")))
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        pipes.push(Mutex::new(child.stdin.take()));
        children.push(child);
    }
    let pipes: Pipes = Arc::new(pipes);
    let app = Router::new()
        .route("/{i}", post(write_line))
        .with_state(pipes.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("READY {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    // Stdin is the lifeline: the harness closes it when the row is done, and it closes by
    // itself if the harness dies. The deadline covers a parent that neither ends nor closes it.
    let mut rest = Vec::new();
    tokio::time::timeout(LIFELINE, tokio::io::stdin().read_to_end(&mut rest))
        .await
        .context("stdin did not end within the deadline")??;
    server.abort();
    for pipe in pipes.iter() {
        drop(pipe.lock().await.take());
    }
    for mut child in children {
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .context("a reader did not end within 10 s of its stdin's end")??;
        if !status.success() {
            bail!("a reader failed: {status}");
        }
    }
    Ok(())
}

async fn write_line(State(pipes): State<Pipes>, Path(i): Path<usize>, body: String) -> StatusCode {
    let Some(pipe) = pipes.get(i) else {
        return StatusCode::NOT_FOUND;
    };
    let mut pipe = pipe.lock().await;
    let Some(stdin) = pipe.as_mut() else {
        return StatusCode::GONE;
    };
    let line = format!("{}\n", body.trim());
    match stdin.write_all(line.as_bytes()).await {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
