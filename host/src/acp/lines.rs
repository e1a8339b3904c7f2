//! The ACP transport over a child's pipes: newline-delimited JSON-RPC, as the crate's
//! `ByteStreams`, but every incoming line is bounded. An agent that writes a line longer than
//! `agent.max_line_bytes` (or never ends one) ends its connection with a clear error instead of
//! growing the daemon's memory without limit.

use agent_client_protocol::Lines;
use futures::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};

use super::outbox::Outbox;
use super::{Routes, prompt, updates};

pub type LineSink = Pin<Box<dyn Sink<String, Error = io::Error> + Send>>;
pub type LineStream = Pin<Box<dyn Stream<Item = io::Result<String>> + Send>>;

/// The crate's transport over the agent's pipes, and the outbox its lines go through, which
/// the bridge also writes a turn's prompt and cancel to (see `outbox`).
/// The agent's `session/update` lines are routed through `routes` by the reader where that keeps
/// their order (see `updates`).
pub(crate) fn transport(
    to_agent: impl AsyncWrite + Send + 'static,
    from_agent: impl AsyncRead + Send + Unpin + 'static,
    max_line: usize,
    routes: Arc<Routes>,
) -> (Lines<LineSink, LineStream>, Arc<Outbox>) {
    let outbox = Outbox::new(to_agent);
    let sink: LineSink = Box::pin(outbox.sink());
    let incoming = updates::route_when_in_order(incoming(from_agent, max_line), routes);
    let lines = Lines::new(sink, incoming);
    (lines, outbox)
}

/// The agent's output as lines, ending after the first error.
pub(crate) fn incoming(
    from_agent: impl AsyncRead + Send + Unpin + 'static,
    max_line: usize,
) -> LineStream {
    let reader = BufReader::with_capacity(64 << 10, from_agent);
    Box::pin(futures::stream::unfold(
        Some((reader, Vec::new())),
        move |state| async move {
            let (mut reader, mut buf) = state?;
            match read_line(&mut reader, &mut buf, max_line).await {
                Ok(Some(line)) => {
                    // An agent's line is the daemon's work too (`sched::realtime`).
                    crate::sched::note_activity();
                    Some((Ok(prompt::reroute_answer(line)), Some((reader, buf))))
                }
                Ok(None) => None,
                // After an error the stream ends: the rest of an oversized line is not JSON-RPC.
                Err(e) => Some((Err(e), None)),
            }
        },
    ))
}

/// The next line without its newline, `None` at EOF. Never holds more than `max` bytes.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<String>> {
    buf.clear();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            if buf.is_empty() {
                return Ok(None);
            }
            break;
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if buf.len() + take > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the agent wrote a line longer than {max} bytes"),
            ));
        }
        buf.extend_from_slice(&available[..take]);
        r.consume(take + usize::from(done));
        if done {
            break;
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(std::mem::take(buf))
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the agent wrote invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of `input` read through a `capacity`-byte buffer, up to the first error.
    async fn lines_with(input: &[u8], max: usize, capacity: usize) -> Vec<Result<String, String>> {
        let mut r = BufReader::with_capacity(capacity, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_line(&mut r, &mut buf, max).await {
                Ok(Some(l)) => out.push(Ok(l)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    async fn lines(input: &[u8], max: usize) -> Vec<Result<String, String>> {
        lines_with(input, max, 4).await
    }

    #[tokio::test]
    async fn splits_lines_across_buffer_refills() {
        let got = lines(b"{\"a\":1}\r\n\nlast-without-newline", 64).await;
        assert_eq!(
            got,
            [
                Ok("{\"a\":1}".to_string()),
                Ok(String::new()),
                Ok("last-without-newline".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn a_line_over_the_bound_is_an_error_not_a_buffer() {
        let got = lines(b"short\n0123456789abcdef\nnever read\n", 10).await;
        assert_eq!(got[0], Ok("short".to_string()));
        assert!(
            got[1]
                .as_ref()
                .is_err_and(|e| e.contains("longer than 10 bytes")),
            "{got:?}"
        );
        assert_eq!(got.len(), 2);
        // Exactly at the bound is fine.
        assert_eq!(
            lines(b"0123456789\n", 10).await,
            [Ok("0123456789".to_string())]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes, any buffer size: lines come back as written, none longer than the
            /// bound, and a stream that stays under the bound loses nothing.
            #[test]
            fn lines_round_trip_within_the_bound(
                parts in proptest::collection::vec("[ -~]{0,40}", 0..20),
                max in 1usize..48,
                capacity in 1usize..16,
            ) {
                let input = parts.iter().map(|p| format!("{p}\n")).collect::<String>();
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let got = rt.block_on(lines_with(input.as_bytes(), max, capacity));
                for (i, line) in got.iter().enumerate() {
                    match line {
                        Ok(l) => {
                            prop_assert!(l.len() <= max);
                            prop_assert_eq!(l, parts[i].trim_end_matches('\r'));
                        }
                        Err(_) => {
                            prop_assert!(parts[i].len() > max, "refused a line within the bound");
                            prop_assert_eq!(i, got.len() - 1, "the stream ends at the error");
                        }
                    }
                }
                if parts.iter().all(|p| p.len() <= max) {
                    prop_assert_eq!(got.len(), parts.len());
                }
            }
        }
    }
}
