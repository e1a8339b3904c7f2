//! The agent's stdin, written by two parties in one order: the ACP crate (its requests and its
//! answers to the agent) and the bridge, which writes a turn's `session/prompt` and
//! `session/cancel` straight from the task that admits or cancels the turn.
//!
//! Why the bridge writes past the crate: the crate (5.0) queues every outgoing message for its
//! connection task, which moves it through a second channel to the transport before our sink
//! writes the pipe. On the prompt path that is a wake of the other runtime worker and tens of
//! microseconds of its CPU before the agent can read the request. A line written here goes to
//! the pipe in the caller's own system call when nothing is waiting before it.
//!
//! Every line goes through one FIFO, so lines never interleave and keep the order in which they
//! were handed over. A write that cannot finish at once (the agent is not reading and its pipe
//! is full) leaves the rest queued; whoever is waiting drives the queue: the crate's sink while
//! it flushes, and a task spawned for a direct line. The queue is bounded by its callers: the
//! crate flushes each of its lines before it sends the next, and the bridge writes at most a
//! prompt and a cancel per running turn.

use futures::Sink;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::AsyncWrite;

type Writer = Pin<Box<dyn AsyncWrite + Send>>;

pub(crate) struct Outbox {
    state: Mutex<State>,
}

struct State {
    /// `None` once closed: the child's stdin is closed with it.
    writer: Option<Writer>,
    /// Whole lines, newline included; the first may be partly written.
    queue: VecDeque<Vec<u8>>,
    /// Bytes of the first line already written.
    written: usize,
    /// Drivers waiting for the queue to move (each with the last waker it registered); any
    /// driver that moves it wakes them, since the writer remembers only the last one.
    waiters: Vec<Waker>,
    /// A task drives the queue for direct lines.
    draining: bool,
    /// The writer failed or was closed (then `writer` is `None` too): nothing more can be
    /// written.
    failed: Option<io::ErrorKind>,
}

impl Outbox {
    pub(crate) fn new(writer: impl AsyncWrite + Send + 'static) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                writer: Some(Box::pin(writer)),
                queue: VecDeque::new(),
                written: 0,
                waiters: Vec::new(),
                draining: false,
                failed: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `line` (without its newline) now if nothing is queued before it, and queues what
    /// the pipe does not take. Never waits. An error means the agent's stdin is closed or
    /// broken: the line will never reach it.
    pub(crate) fn send_now(self: &Arc<Self>, line: String) -> io::Result<()> {
        let mut st = self.lock();
        st.push(line)?;
        if st.queue.len() == 1 {
            // Nothing before it: try in this task. A waker that does nothing is enough, since a
            // line that stays queued gets a driver of its own below.
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(Err(e)) = st.drive(&mut cx) {
                return Err(e);
            }
        }
        // Outside a runtime (a call dropped while the daemon exits) the rest stays queued for
        // the crate's sink, if it ever flushes again.
        let runtime = tokio::runtime::Handle::try_current();
        if let (false, false, Ok(runtime)) = (st.queue.is_empty(), st.draining, runtime) {
            st.draining = true;
            let me = self.clone();
            runtime.spawn(async move {
                let _ = std::future::poll_fn(|cx| {
                    let mut st = me.lock();
                    let r = st.drive(cx);
                    if r.is_ready() {
                        st.draining = false;
                    }
                    r
                })
                .await;
            });
        }
        Ok(())
    }

    /// Closes the agent's stdin; queued lines are dropped and later ones refused.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.writer = None;
        st.queue.clear();
        st.failed.get_or_insert(io::ErrorKind::BrokenPipe);
        st.wake_all();
    }

    /// The crate's side: a `Sink` of lines that completes a flush once every line queued so far
    /// (its own and direct ones) is written. Dropping it closes the agent's stdin, as dropping
    /// the crate's transport always did.
    pub(crate) fn sink(self: &Arc<Self>) -> OutboxSink {
        OutboxSink(self.clone())
    }
}

impl State {
    fn usable(&self) -> io::Result<()> {
        match self.failed {
            Some(kind) => Err(io::Error::new(kind, "the agent's stdin is closed")),
            None => Ok(()),
        }
    }

    /// Queues `line` (without its newline) behind every line before it.
    fn push(&mut self, line: String) -> io::Result<()> {
        self.usable()?;
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        self.queue.push_back(bytes);
        Ok(())
    }

    /// Writes queued lines until the queue is empty (then flushes) or the writer would block.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.usable() {
            return Poll::Ready(Err(e));
        }
        let Some(writer) = self.writer.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        let mut moved = false;
        while let Some(front) = self.queue.front() {
            match writer.as_mut().poll_write(cx, &front[self.written..]) {
                Poll::Ready(Ok(0)) => return self.fail(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    moved = true;
                    self.written += n;
                    if self.written == front.len() {
                        self.queue.pop_front();
                        self.written = 0;
                    }
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => return self.fail(e),
                Poll::Pending => {
                    if moved {
                        self.wake_all();
                    }
                    if !self.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                        self.waiters.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        }
        let flushed = writer.as_mut().poll_flush(cx);
        self.wake_all();
        match flushed {
            Poll::Ready(Err(e)) => self.fail(e),
            // A writer that flushes later (not a pipe) is flushed by the next drive.
            _ => Poll::Ready(Ok(())),
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<io::Result<()>> {
        self.failed = Some(e.kind());
        self.queue.clear();
        self.wake_all();
        Poll::Ready(Err(e))
    }

    fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }
}

pub(crate) struct OutboxSink(Arc<Outbox>);

impl Sink<String> for OutboxSink {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.lock().usable())
    }

    fn start_send(self: Pin<&mut Self>, line: String) -> io::Result<()> {
        self.0.lock().push(line)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.lock().drive(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = self.0.lock().drive(cx);
        if r.is_ready() {
            self.0.close();
        }
        r
    }
}

impl Drop for OutboxSink {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::SinkExt;
    use tokio::io::AsyncReadExt;

    /// Lines handed over by the crate's sink and directly, in that order, arrive whole and in
    /// order even when the pipe is full and every write is partial.
    #[tokio::test]
    async fn lines_keep_their_order_through_a_full_pipe() {
        // A 64-byte pipe: every line below is written in several pieces.
        let (to_agent, mut agent) = tokio::io::duplex(64);
        let outbox = Outbox::new(to_agent);
        let mut sink = outbox.sink();
        let mut want = String::new();
        let reader = tokio::spawn(async move {
            let mut got = String::new();
            agent.read_to_string(&mut got).await.map(|_| got)
        });
        for i in 0..50 {
            let crate_line = format!("{{\"crate\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 7));
            let direct = format!("{{\"direct\":{i},\"pad\":\"{}\"}}", "y".repeat(i * 5));
            want.push_str(&format!("{crate_line}\n{direct}\n"));
            // The crate's line first, not yet flushed: the direct line queues behind it.
            sink.feed(crate_line).await.unwrap();
            outbox.send_now(direct).unwrap();
            if i % 3 == 0 {
                sink.flush().await.unwrap();
            }
        }
        sink.close().await.unwrap();
        drop(sink);
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("the pipe closed once everything was written")
            .unwrap()
            .unwrap();
        assert_eq!(got, want);
    }

    /// Direct lines alone (no crate activity) reach a reader that drains slowly: the spawned
    /// driver finishes them.
    #[tokio::test]
    async fn direct_lines_finish_without_the_crate() {
        let (to_agent, mut agent) = tokio::io::duplex(16);
        let outbox = Outbox::new(to_agent);
        let _sink = outbox.sink();
        let lines: Vec<String> = (0..20)
            .map(|i| format!("line {i} {}", "z".repeat(40)))
            .collect();
        for l in &lines {
            outbox.send_now(l.clone()).unwrap();
        }
        let want: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            agent.read_exact(&mut got),
        )
        .await
        .expect("the queued lines were written")
        .unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use tokio::io::AsyncReadExt;

        /// One step of a writer: the crate feeds a line (flushing or not), or the bridge sends
        /// one directly.
        #[derive(Debug, Clone)]
        enum Step {
            Crate { len: usize, flush: bool },
            Direct { len: usize },
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (0usize..300, any::<bool>()).prop_map(|(len, flush)| Step::Crate { len, flush }),
                (0usize..300).prop_map(|len| Step::Direct { len }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Any mix of crate and direct lines, through any pipe size, read in any chunk
            /// size: the agent reads every line whole, in the order they were handed over.
            #[test]
            fn every_line_arrives_whole_and_in_order(
                steps in proptest::collection::vec(step(), 1..40),
                pipe in 1usize..512,
                chunk in 1usize..256,
            ) {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let (got, want) = rt.block_on(async move {
                    let (to_agent, mut agent) = tokio::io::duplex(pipe);
                    let reader = tokio::spawn(async move {
                        let mut got = Vec::new();
                        let mut buf = vec![0u8; chunk];
                        loop {
                            match agent.read(&mut buf).await {
                                Ok(0) | Err(_) => return got,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                    });
                    let outbox = Outbox::new(to_agent);
                    let mut sink = outbox.sink();
                    let mut want = Vec::new();
                    for (i, s) in steps.iter().enumerate() {
                        let (tag, len) = match s {
                            Step::Crate { len, .. } => ('c', *len),
                            Step::Direct { len } => ('d', *len),
                        };
                        let line = format!("{tag}{i}:{}", "x".repeat(len));
                        want.extend_from_slice(line.as_bytes());
                        want.push(b'\n');
                        match s {
                            Step::Crate { flush: true, .. } => sink.send(line).await.unwrap(),
                            Step::Crate { flush: false, .. } => sink.feed(line).await.unwrap(),
                            Step::Direct { .. } => outbox.send_now(line).unwrap(),
                        }
                    }
                    sink.close().await.unwrap();
                    drop(sink);
                    let got = tokio::time::timeout(std::time::Duration::from_secs(20), reader)
                        .await
                        .expect("the pipe closed after the last line")
                        .unwrap();
                    (got, want)
                });
                prop_assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
            }
        }
    }

    /// Dropping the crate's sink closes the agent's stdin, and later lines are refused.
    #[tokio::test]
    async fn dropping_the_sink_closes_stdin() {
        let (to_agent, mut agent) = tokio::io::duplex(1024);
        let outbox = Outbox::new(to_agent);
        let sink = outbox.sink();
        outbox.send_now("before".into()).unwrap();
        drop(sink);
        let mut got = String::new();
        agent.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "before\n");
        assert!(outbox.send_now("after".into()).is_err());
    }
}
