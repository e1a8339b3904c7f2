//! `session/update` lines routed by the reader itself, past the ACP crate, where that keeps
//! their order.
//!
//! Most of what an agent writes is `session/update` notifications: a streaming agent writes one
//! per chunk. The crate parses each line into a `Value`, converts it again into its message
//! type, hands it through a channel to its dispatch loop (a wake of its own task, which tokio
//! requeues as a yield that wakes a parked worker, a real-time serving thread that then preempts
//! the agent) and offers it to each handler in turn: in a profile of the 16-session row, about a
//! seventh of the daemon's CPU (BENCHMARKS.md, "Round twenty-three"). Only the update's routing
//! is the daemon's work.
//!
//! The reader routes an update itself when every line it handed the crate before it has been
//! dispatched: routing it then is routing it in its place. Otherwise the update goes through the
//! crate, behind those lines. To know when the crate has caught up, the reader follows each
//! burst of lines it hands the crate with a barrier, a notification of our own; the crate
//! dispatches in order, one message at a time, and the barrier's handler counts it
//! (BENCHMARKS.md, "Round twenty-four").

use futures::{FutureExt as _, StreamExt as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Routes;
use super::lines::LineStream;

/// The barrier's method. Not an ACP method: it only exists between the reader and the dispatch
/// loop. Its params carry a key the agent never sees, so a line of the agent's with this method
/// is not taken for a barrier (it is ignored, as any method the daemon does not know).
pub(crate) const BARRIER_METHOD: &str = "acpd/barrier";

/// Barriers handed to the crate and barriers it has dispatched. The reader and the dispatch
/// loop run in one task; the atomics only make the counts shareable.
pub(crate) struct Order {
    sent: AtomicU64,
    seen: AtomicU64,
    key: String,
    line: String,
}

impl Default for Order {
    fn default() -> Self {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let line =
            super::prompt::notification_line(BARRIER_METHOD, &serde_json::json!({"key": key}))
                .expect("a JSON object with string keys serialises");
        Self {
            sent: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            key,
            line,
        }
    }
}

impl Order {
    /// True when the crate has dispatched every line handed to it.
    fn caught_up(&self) -> bool {
        self.seen.load(Ordering::Acquire) == self.sent.load(Ordering::Relaxed)
    }

    fn barrier(&self) -> String {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.line.clone()
    }

    /// The dispatch loop reached a notification with the barrier's method: counted when it
    /// is one of ours.
    pub(crate) fn dispatched(&self, params: &Value) {
        if params.get("key").and_then(Value::as_str) == Some(self.key.as_str()) {
            self.seen.fetch_add(1, Ordering::Release);
        }
    }
}

/// The agent's lines as the crate should get them: updates routed here when the crate has
/// caught up, every other line passed on, and a barrier after each burst of lines passed on
/// (when the reader has no further line ready), so a crate that is behind is not handed twice
/// its messages.
pub(crate) fn route_when_in_order(lines: LineStream, routes: Arc<Routes>) -> LineStream {
    let state = Reader {
        lines,
        routes,
        owe: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            let item = if st.owe {
                // Polled with a no-op waker: when no line is ready, the barrier goes out, and
                // the crate registers its own when it polls this stream for its next line.
                match st.lines.next().now_or_never() {
                    Some(item) => item,
                    None => {
                        st.owe = false;
                        let barrier = st.routes.order.barrier();
                        return Some((Ok(barrier), st));
                    }
                }
            } else {
                st.lines.next().await
            };
            let line = match item? {
                Ok(line) => line,
                Err(e) => return Some((Err(e), st)),
            };
            if !st.owe
                && st.routes.order.caught_up()
                && let Some(params) = update_params(&line)
            {
                // No yield after every update, as the crate's self-wake did: that woke a parked
                // worker each time (BENCHMARKS.md, "Round twenty-four").
                super::route_update(&st.routes, params).await;
                continue;
            }
            st.owe = true;
            return Some((Ok(line), st));
        }
    }))
}

struct Reader {
    lines: LineStream,
    routes: Arc<Routes>,
    /// Lines were handed to the crate since its last barrier.
    owe: bool,
}

/// A JSON-RPC notification as the crate accepts one; `id` is `Some` whenever the member is
/// there, `null` included (a call, not a notification).
#[derive(Deserialize)]
struct Notification<'a> {
    #[serde(borrow)]
    jsonrpc: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    #[serde(default)]
    params: Value,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The params of a `session/update` notification; `None` for any other line, which the crate
/// then handles as before (a call, another method, a line that is not JSON-RPC).
fn update_params(line: &str) -> Option<Value> {
    if !line.contains("session/update") {
        return None;
    }
    let n: Notification = serde_json::from_str(line).ok()?;
    (n.jsonrpc == "2.0" && n.method == "session/update" && n.id.is_none()).then_some(n.params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_session_update_notifications_are_taken() {
        let update = r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk"}}}"#;
        assert_eq!(
            update_params(update),
            Some(json!({"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk"}}))
        );
        for line in [
            // The same method with an escape: left to the crate, which routes it as before.
            r#"{"jsonrpc":"2.0","method":"session\/update","params":{}}"#,
            // A call, even with a null id, another method, another version, not JSON-RPC.
            r#"{"jsonrpc":"2.0","id":1,"method":"session/update","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"session/update","params":{}}"#,
            r#"{"jsonrpc":"2.0","method":"session/request_permission","params":{"x":"session/update"}}"#,
            r#"{"jsonrpc":"1.0","method":"session/update","params":{}}"#,
            r#"{"method":"session/update","params":{}}"#,
            r#"session/update"#,
            r#"[{"jsonrpc":"2.0","method":"session/update","params":{}}]"#,
        ] {
            assert_eq!(update_params(line), None, "{line}");
        }
    }

    #[test]
    fn one_barrier_follows_each_burst_handed_to_the_crate() {
        const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"fs/read_text_file","params":{}}"#;
        const UPDATE: &str =
            r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1"}}"#;
        let (tx, rx) = futures::channel::mpsc::unbounded::<std::io::Result<String>>();
        let routes = Arc::new(Routes::default());
        let mut out = route_when_in_order(Box::pin(rx), routes.clone());
        let barrier = routes.order.line.clone();
        let mut next = || out.next().now_or_never().map(|l| l.unwrap().unwrap());

        // A call and the updates ready behind it go to the crate, then one barrier.
        for line in [CALL, UPDATE, UPDATE] {
            tx.unbounded_send(Ok(line.to_string())).unwrap();
        }
        assert_eq!(next().as_deref(), Some(CALL));
        assert_eq!(next().as_deref(), Some(UPDATE));
        assert_eq!(next().as_deref(), Some(UPDATE));
        assert_eq!(next().as_deref(), Some(barrier.as_str()));
        assert_eq!(next(), None, "nothing more is ready");

        // Until the crate has dispatched that barrier, an update still goes through it.
        tx.unbounded_send(Ok(UPDATE.to_string())).unwrap();
        assert_eq!(next().as_deref(), Some(UPDATE));
        assert_eq!(next().as_deref(), Some(barrier.as_str()));
        let ours: Value = serde_json::from_str(&barrier).unwrap();
        routes.order.dispatched(&ours["params"]);
        routes.order.dispatched(&ours["params"]);

        // Caught up: the reader routes the update itself and the crate gets nothing.
        tx.unbounded_send(Ok(UPDATE.to_string())).unwrap();
        assert_eq!(next(), None);
        drop(tx);
        assert!(
            matches!(out.next().now_or_never(), Some(None)),
            "the end is passed on"
        );
    }

    #[test]
    fn the_crate_has_caught_up_when_it_has_dispatched_every_barrier() {
        let order = Order::default();
        assert!(order.caught_up());
        let line: Value = serde_json::from_str(&order.barrier()).unwrap();
        assert_eq!(line["method"], BARRIER_METHOD);
        order.barrier();
        assert!(!order.caught_up());
        order.dispatched(&line["params"]);
        assert!(!order.caught_up());
        // An agent's own line with the barrier's method does not count, keyless or not.
        order.dispatched(&json!({}));
        order.dispatched(&json!({"key": "guessed"}));
        assert!(!order.caught_up());
        order.dispatched(&line["params"]);
        assert!(order.caught_up());
        assert_ne!(
            Order::default().key,
            order.key,
            "each connection has a key of its own"
        );
    }

    mod properties {
        use super::*;
        use crate::acp::{Route, SessionSink};
        use agent_client_protocol::v1::schema::{
            RequestPermissionOutcome, RequestPermissionRequest,
        };
        use proptest::prelude::*;
        use std::sync::{Mutex, Weak};

        /// What reached a handler, in order: the `n` of each update and other notification.
        #[derive(Default)]
        struct Log(Mutex<Vec<u64>>);

        impl Log {
            fn push(&self, v: &Value) {
                self.0.lock().unwrap().push(v["n"].as_u64().unwrap());
            }
        }

        impl SessionSink for Log {
            fn update(&self, notification: Value) -> bool {
                self.push(&notification["update"]);
                false
            }
            fn permission(
                &self,
                _: RequestPermissionRequest,
                _: tokio::sync::oneshot::Sender<RequestPermissionOutcome>,
            ) {
            }
            fn agent_exited(&self, _: &str, _: crate::child::ExitInfo) {}
        }

        /// The crate's side, as far as order goes: the lines handed to it, dispatched one at a
        /// time from the front, as the notification handler does.
        fn dispatch(
            crate_queue: &mut std::collections::VecDeque<String>,
            routes: &Routes,
            log: &Log,
        ) {
            let Some(line) = crate_queue.pop_front() else {
                return;
            };
            let v: Value = serde_json::from_str(&line).unwrap();
            match v["method"].as_str().unwrap() {
                BARRIER_METHOD => routes.order.dispatched(&v["params"]),
                "session/update" => log.push(&v["params"]["update"]),
                _ => log.push(&v["params"]),
            }
        }

        proptest! {
            /// However the agent's lines arrive (in bursts of any length) and however far
            /// behind the crate is, every update and every other line reaches its handler in
            /// the order the agent wrote them, lines of the agent's that borrow the barrier's
            /// method change nothing, and the crate gets at most one barrier per burst.
            #[test]
            fn lines_reach_their_handlers_in_the_agents_order(
                steps in proptest::collection::vec((0u8..5, any::<bool>(), 0usize..4), 1..60),
            ) {
                let (tx, rx) = futures::channel::mpsc::unbounded::<std::io::Result<String>>();
                let routes = Arc::new(Routes::default());
                let log = Arc::new(Log::default());
                let sink: Weak<dyn SessionSink> = Arc::downgrade(&log) as Weak<dyn SessionSink>;
                routes.lock().insert("s1".into(), Route { sink, muted: false });
                let mut out = route_when_in_order(Box::pin(rx), routes.clone());
                let mut crate_queue = std::collections::VecDeque::new();
                let (mut expected, mut bursts, mut ended) = (Vec::new(), 0, false);
                let mut drain = |crate_queue: &mut std::collections::VecDeque<String>| {
                    while let Some(item) = out.next().now_or_never() {
                        match item {
                            Some(line) => crate_queue.push_back(line.unwrap()),
                            None => return true,
                        }
                    }
                    false
                };
                for (n, (kind, burst_ends, dispatched)) in steps.iter().enumerate() {
                    let line = match kind {
                        0 | 1 => {
                            expected.push(n as u64);
                            json!({"jsonrpc": "2.0", "method": "session/update",
                                   "params": {"sessionId": "s1", "update": {"n": n}}})
                        }
                        2 => {
                            expected.push(n as u64);
                            json!({"jsonrpc": "2.0", "method": "x/other", "params": {"n": n}})
                        }
                        // The agent's own lines with the barrier's method, which the crate's
                        // handler ignores: keyless, or with a key that is not ours.
                        3 => json!({"jsonrpc": "2.0", "method": BARRIER_METHOD, "params": {}}),
                        _ => json!({"jsonrpc": "2.0", "method": BARRIER_METHOD,
                                    "params": {"key": "0123456789abcdef0123456789abcdef"}}),
                    };
                    tx.unbounded_send(Ok(line.to_string())).unwrap();
                    if *burst_ends || n + 1 == steps.len() {
                        bursts += 1;
                        ended |= drain(&mut crate_queue);
                    }
                    for _ in 0..*dispatched {
                        dispatch(&mut crate_queue, &routes, &log);
                    }
                }
                drop(tx);
                ended |= drain(&mut crate_queue);
                prop_assert!(ended, "the end is passed on");
                while !crate_queue.is_empty() {
                    dispatch(&mut crate_queue, &routes, &log);
                }
                prop_assert_eq!(&*log.0.lock().unwrap(), &expected);
                prop_assert!(routes.order.caught_up());
                let sent = routes.order.sent.load(Ordering::Relaxed);
                prop_assert!(sent <= bursts, "{} barriers for {} bursts", sent, bursts);
            }
        }
    }
}
