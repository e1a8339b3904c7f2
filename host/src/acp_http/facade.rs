//! The ACP agent a remote client talks to over `/acp`: one per transport connection, built by
//! the crate's factory. It owns no agent of its own: every method maps onto the bridge, so a
//! session opened here is a bridge session (listed, attachable and voted on over REST too),
//! and the supervised child is reached only through the bridge.
//!
//! Handlers return at once (the crate's dispatch loop blocks on them): anything that waits
//! (session creation, a turn) runs in its own task and answers through the moved responder.

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::v1::schema::{
    AgentCapabilities, CancelNotification, Implementation, InitializeRequest, InitializeResponse,
    LoadSessionRequest, LoadSessionResponse, NewSessionRequest, NewSessionResponse,
    PromptCapabilities, PromptRequest, PromptResponse, SetSessionModeRequest,
    SetSessionModeResponse, StopReason,
};
use agent_client_protocol::{
    Agent, Client, ConnectTo, on_receive_notification, on_receive_request,
};
use opentelemetry::KeyValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::relay::{Relay, TurnEnd};
use super::rpc::RpcSpan;
use crate::bridge::{CreateScope, Prompt, Session, Workspace};
use crate::error::ApiError;
use crate::http::AppState;
use crate::telemetry::semconv::{PROMPT_ID, WORKSPACE_ID};

/// What every connection of one mount shares: the daemon, and the workspace its path names
/// (`/workspaces/{id}/acp`) or none (`/acp`: the request's `cwd`, else the primary one).
#[derive(Clone)]
pub struct Mount {
    pub state: AppState,
    pub workspace: Option<Arc<Workspace>>,
}

/// One ACP connection's view of the bridge: the client id each session issued it, and the relay
/// that carries each session's events to it. Dropped with the connection, which stops the relays
/// (and so frees their event-bus subscriber slots).
struct Conn {
    mount: Mount,
    sessions: Mutex<HashMap<String, Joined>>,
}

struct Joined {
    client_id: String,
    relay: Arc<Relay>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for j in self
            .sessions
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            j.relay.stop();
        }
    }
}

impl Conn {
    fn workspace(&self, cwd: Option<&std::path::Path>) -> Result<Arc<Workspace>, ApiError> {
        let bridge = &self.mount.state.bridge;
        match (&self.mount.workspace, cwd) {
            // A workspace mount serves that workspace; a cwd naming another one is refused.
            (Some(ws), Some(c)) => {
                let asked = bridge.workspace_for_cwd(Some(&c.display().to_string()))?;
                if asked.id != ws.id {
                    return Err(ApiError::new(
                        400,
                        "workspace_mismatch",
                        "cwd is not the workspace this endpoint serves",
                    )
                    .with("cwd", c.display().to_string()));
                }
                Ok(ws.clone())
            }
            (Some(ws), None) => Ok(ws.clone()),
            (None, c) => bridge.workspace_for_cwd(c.map(|c| c.display().to_string()).as_deref()),
        }
    }

    /// Joins `session` (once per connection): a client id from the session, and a relay of its
    /// events from `replay_from` (`Some(0)`: everything the ring holds, for `session/load`).
    fn join(
        &self,
        cx: &ConnectionTo<Client>,
        session: &Arc<Session>,
        replay_from: Option<u64>,
    ) -> Result<(String, Arc<Relay>), ApiError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = sessions.get(&session.id)
            && j.relay.is_live()
        {
            return Ok((j.client_id.clone(), j.relay.clone()));
        }
        let client_id = session.attach_client(None);
        let relay = Relay::start(cx.clone(), session.clone(), client_id.clone(), replay_from)?;
        sessions.insert(
            session.id.clone(),
            Joined {
                client_id: client_id.clone(),
                relay: relay.clone(),
            },
        );
        Ok((client_id, relay))
    }
}

/// The agent component for one transport connection.
pub fn agent(mount: Mount) -> impl ConnectTo<Client> {
    let conn = Arc::new(Conn {
        mount,
        sessions: Mutex::new(HashMap::new()),
    });
    let (c_new, c_load, c_prompt, c_cancel, c_mode) =
        (conn.clone(), conn.clone(), conn.clone(), conn.clone(), conn);
    Agent
        .v1()
        .name("acpd")
        .on_receive_request(
            async move |req: InitializeRequest, responder, _cx| {
                let span = RpcSpan::start("initialize", req.meta.as_ref(), None);
                // acpd speaks v1 whatever the client asks; the child's own capabilities are
                // known per session, so what is announced is what the bridge serves.
                let caps = AgentCapabilities::new()
                    .load_session(true)
                    .prompt_capabilities(
                        PromptCapabilities::new()
                            .image(true)
                            .audio(true)
                            .embedded_context(true),
                    );
                span.ok();
                responder.respond(
                    InitializeResponse::new(ProtocolVersion::V1)
                        .agent_capabilities(caps)
                        .agent_info(Implementation::new("acpd", env!("CARGO_PKG_VERSION"))),
                )
            },
            on_receive_request!(),
        )
        .on_receive_request(
            async move |req: NewSessionRequest, responder, cx: ConnectionTo<Client>| {
                let conn = c_new.clone();
                tokio::spawn(async move {
                    let span = RpcSpan::start("session/new", req.meta.as_ref(), None);
                    let r = async {
                        let ws = conn.workspace(Some(&req.cwd))?;
                        span.set(KeyValue::new(WORKSPACE_ID, ws.id.clone()));
                        let created = conn
                            .mount
                            .state
                            .bridge
                            .create_session(
                                ws,
                                CreateScope::Thread,
                                None,
                                crate::http::routes::client_meta(req.meta),
                                None,
                            )
                            .with_span(&span)
                            .await?;
                        conn.join(&cx, &created.session, None)?;
                        Ok::<_, ApiError>(created.session)
                    }
                    .await;
                    let _ = match r {
                        Ok(s) => {
                            span.session(&s.id);
                            span.ok();
                            responder.respond(announced(&s, NewSessionResponse::new(s.id.clone())))
                        }
                        Err(e) => responder.respond_with_error(span.fail(&e)),
                    };
                });
                Ok(())
            },
            on_receive_request!(),
        )
        .on_receive_request(
            async move |req: LoadSessionRequest, responder, cx: ConnectionTo<Client>| {
                let conn = c_load.clone();
                tokio::spawn(async move {
                    let id = req.session_id.to_string();
                    let span = RpcSpan::start("session/load", req.meta.as_ref(), Some(&id));
                    let r = async {
                        let ws = conn.workspace(Some(&req.cwd))?;
                        let s = conn
                            .mount
                            .state
                            .bridge
                            .load_session(&id, Some(ws))
                            .with_span(&span)
                            .await?;
                        // The history the ring holds goes out as `session/update`s before the
                        // answer, as ACP's session/load has it.
                        let (_, relay) = conn.join(&cx, &s, Some(0))?;
                        relay.replayed().await;
                        Ok::<_, ApiError>(s)
                    }
                    .await;
                    let _ = match r {
                        Ok(s) => {
                            span.ok();
                            responder.respond(announced(&s, LoadSessionResponse::new()))
                        }
                        Err(e) => responder.respond_with_error(span.fail(&e)),
                    };
                });
                Ok(())
            },
            on_receive_request!(),
        )
        .on_receive_request(
            async move |req: PromptRequest, responder, cx: ConnectionTo<Client>| {
                let id = req.session_id.to_string();
                let span = RpcSpan::start("session/prompt", req.meta.as_ref(), Some(&id));
                let admitted = (|| {
                    if req.prompt.is_empty() {
                        return Err(ApiError::invalid_request(
                            "prompt must contain at least one content block",
                        ));
                    }
                    let s = c_prompt.mount.state.bridge.session(&id)?;
                    let (client, relay) = c_prompt.join(&cx, &s, None)?;
                    let prompt = Prompt::new(
                        req.prompt,
                        crate::http::routes::client_meta(req.meta),
                        Some(client),
                    );
                    let prompt_id = prompt.id.clone();
                    let end = relay.await_turn(&prompt_id);
                    // Admitted under the JSON-RPC span: the turn's dispatch span (and the
                    // agent's spans under it) continue this trace.
                    let admitted = {
                        let _in_span = span.cx().clone().attach();
                        s.enqueue(prompt)
                    };
                    if let Err(e) = admitted {
                        relay.forget(&prompt_id);
                        return Err(e);
                    }
                    span.set(KeyValue::new(PROMPT_ID, prompt_id));
                    Ok::<_, ApiError>(end)
                })();
                let end = match admitted {
                    Ok(end) => end,
                    Err(e) => return responder.respond_with_error(span.fail(&e)),
                };
                tokio::spawn(async move {
                    let _ = match end.await {
                        Ok(TurnEnd::Stopped(stop)) => {
                            span.ok();
                            responder.respond(PromptResponse::new(stop_reason(&stop)))
                        }
                        Ok(TurnEnd::Failed(e)) => responder.respond_with_error(span.fail_rpc(e)),
                        Err(e) => responder.respond_with_error(span.fail(&e)),
                    };
                });
                Ok(())
            },
            on_receive_request!(),
        )
        .on_receive_notification(
            async move |n: CancelNotification, _cx| {
                let id = n.session_id.to_string();
                let span = RpcSpan::start("session/cancel", n.meta.as_ref(), Some(&id));
                match c_cancel.mount.state.bridge.session(&id) {
                    Ok(s) => {
                        if let Some(p) = s.cancel_running() {
                            span.set(KeyValue::new(PROMPT_ID, p));
                        }
                        span.ok();
                    }
                    // A notification has no answer: the span records it.
                    Err(e) => drop(span.fail(&e)),
                }
                Ok(())
            },
            on_receive_notification!(),
        )
        .on_receive_request(
            async move |req: SetSessionModeRequest, responder, _cx| {
                let conn = c_mode.clone();
                tokio::spawn(async move {
                    let id = req.session_id.to_string();
                    let span = RpcSpan::start("session/set_mode", req.meta.as_ref(), Some(&id));
                    let r = async {
                        let s = conn.mount.state.bridge.session(&id)?;
                        let client = conn
                            .sessions
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&id)
                            .map(|j| j.client_id.clone());
                        crate::http::session_ops::apply_mode(
                            &conn.mount.state,
                            &s,
                            &req.mode_id.to_string(),
                            client.as_deref(),
                        )
                        .with_span(&span)
                        .await
                    }
                    .await;
                    let _ = match r {
                        Ok(_) => {
                            span.ok();
                            responder.respond(SetSessionModeResponse::new())
                        }
                        Err(e) => responder.respond_with_error(span.fail(&e)),
                    };
                });
                Ok(())
            },
            on_receive_request!(),
        )
}

/// A session/new or session/load answer carrying what the agent announced for the session (its
/// modes, config options, `_meta`), as the agent itself would answer; `bare` when that does not
/// read as the answer type.
fn announced<T: serde::de::DeserializeOwned>(s: &Session, bare: T) -> T {
    let mut v = s.ctx.state();
    v["sessionId"] = serde_json::Value::from(s.id.clone());
    serde_json::from_value(v).unwrap_or(bare)
}

/// The bridge's stop reason as ACP's; one it does not know is reported as the end of the turn.
fn stop_reason(stop: &str) -> StopReason {
    serde_json::from_value(serde_json::Value::from(stop)).unwrap_or_else(|_| {
        tracing::debug!(stop, "unknown stop reason; answered end_turn");
        StopReason::EndTurn
    })
}

/// Runs a future under a span's context (bridge spans parent to the JSON-RPC span).
trait WithSpan: Sized + std::future::Future {
    fn with_span(self, span: &RpcSpan) -> opentelemetry::context::WithContext<Self>;
}

impl<F: std::future::Future> WithSpan for F {
    fn with_span(self, span: &RpcSpan) -> opentelemetry::context::WithContext<Self> {
        opentelemetry::context::FutureExt::with_context(self, span.cx().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_map_and_unknown_ones_end_the_turn() {
        assert_eq!(stop_reason("end_turn"), StopReason::EndTurn);
        assert_eq!(stop_reason("cancelled"), StopReason::Cancelled);
        assert_eq!(stop_reason("max_tokens"), StopReason::MaxTokens);
        assert_eq!(stop_reason("what"), StopReason::EndTurn);
    }
}
