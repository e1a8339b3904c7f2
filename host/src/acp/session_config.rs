//! Requests that change a live session's configuration: `session/set_mode`,
//! `session/set_config_option` (stable ACP) and `session/set_model` (the extension Qwen Code
//! announces with `models`). Sent untyped, so the agent's whole answer reaches the bridge, and
//! so an extension method the schema crate does not model can be called at all.

use agent_client_protocol::UntypedMessage;
use agent_client_protocol::v1::schema::{
    Meta, SessionId, SetSessionConfigOptionRequest, SetSessionModeRequest,
};
use serde::Serialize;
use serde_json::{Value, json};
use std::time::Duration;

use super::AgentConn;
use crate::error::ApiError;
use crate::telemetry::spans;

impl AgentConn {
    /// One request of `method` with `params`, under `deadline`; the answer as JSON.
    pub(super) async fn raw_call(
        &self,
        method: &'static str,
        params: &impl Serialize,
        deadline: Duration,
        span: &opentelemetry::Context,
    ) -> Result<Value, ApiError> {
        let msg = UntypedMessage::new(method, params).map_err(|e| {
            ApiError::new(
                500,
                "internal_error",
                format!("{method}: {}", super::rpc_text(&e)),
            )
        })?;
        self.call(
            self.cx.send_request(msg).block_task(),
            deadline,
            method,
            span,
        )
        .await
    }

    /// Traced like every ACP call (`acp <method>` CLIENT span with the session id).
    async fn session_call(
        &self,
        method: &'static str,
        session_id: &str,
        params: impl FnOnce(Meta) -> Value,
        deadline: Duration,
    ) -> Result<Value, ApiError> {
        let (span, meta) = self.client_span(method, Some(session_id), Meta::new());
        let r = self.raw_call(method, &params(meta), deadline, &span).await;
        spans::end(&span);
        r
    }

    pub async fn set_mode(
        &self,
        session_id: &str,
        mode_id: &str,
        deadline: Duration,
    ) -> Result<Value, ApiError> {
        self.session_call(
            "session/set_mode",
            session_id,
            |meta| {
                json!(
                    SetSessionModeRequest::new(SessionId::new(session_id), mode_id.to_string())
                        .meta(meta)
                )
            },
            deadline,
        )
        .await
    }

    /// A select option's new value.
    pub async fn set_config_option(
        &self,
        session_id: &str,
        config_id: &str,
        value: &str,
        deadline: Duration,
    ) -> Result<Value, ApiError> {
        self.session_call(
            "session/set_config_option",
            session_id,
            |meta| {
                json!(
                    SetSessionConfigOptionRequest::new(
                        SessionId::new(session_id),
                        config_id.to_string(),
                        value,
                    )
                    .meta(meta)
                )
            },
            deadline,
        )
        .await
    }

    /// `session/set_model {sessionId, modelId}`: not in ACP v1's stable schema; agents that
    /// announce `models` (Qwen Code) serve it.
    pub async fn set_model(
        &self,
        session_id: &str,
        model_id: &str,
        deadline: Duration,
    ) -> Result<Value, ApiError> {
        self.session_call(
            "session/set_model",
            session_id,
            |meta| json!({"sessionId": session_id, "modelId": model_id, "_meta": meta}),
            deadline,
        )
        .await
    }
}
