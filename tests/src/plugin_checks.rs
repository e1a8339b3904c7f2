//! What the plugin tests check of any guest, whatever its language: the text of what reached
//! the receiver and the trace view, and the one scenario every hostile guest must fail the same
//! way (the daemon keeps serving, exports fail closed, the failure is counted under its label).

use crate::otlp::{Receiver, RecvLog, RecvSpan};
use crate::{Daemon, WAIT};
use anyhow::Result;
use serde_json::Value;
use std::time::Duration;

/// A span as one searchable text: name, attributes, status and events.
pub fn span_text(s: &RecvSpan) -> String {
    format!(
        "{} {} {} {:?}",
        s.name,
        Value::Object(s.attributes.clone()),
        s.status_message,
        s.events
    )
}

/// A log record as one searchable text: body and attributes.
pub fn log_text(l: &RecvLog) -> String {
    format!("{} {}", l.body, Value::Object(l.attributes.clone()))
}

/// A path as a TOML string.
pub fn toml_str(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Every trace the daemon's trace view holds, with all its spans, as one text.
pub async fn traces_json(d: &Daemon) -> Result<String> {
    let list: Value = d
        .http
        .get(d.url("/debug/traces.json?limit=500"))
        .send()
        .await?
        .json()
        .await?;
    let mut all = list.to_string();
    for t in list["traces"].as_array().into_iter().flatten() {
        let id = t["traceId"].as_str().unwrap_or_default();
        let url = d.url(&format!("/debug/traces.json?traceId={id}"));
        all.push_str(&d.http.get(url).send().await?.text().await?);
    }
    Ok(all)
}

/// Waits (up to [`WAIT`]) until `/metrics` counts a plugin failure labelled `failure`; returns
/// the metrics text. Prometheus is scraped, not pushed, so this polls.
pub async fn wait_for_plugin_failure(d: &Daemon, failure: &str) -> Result<String> {
    let expected = format!("acpd_plugin_failure=\"{failure}\"");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = d.metrics_text().await?;
        if metrics
            .lines()
            .any(|l| l.starts_with("acpd_plugin_failures_total") && l.contains(&expected))
        {
            return Ok(metrics);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no {expected} in /metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A daemon running a hostile guest that fails at every hook, given one prompt of `text`: the
/// turn completes, errors and `/health` still answer, the prompt's dispatch span reaches the
/// receiver with its content masked (fail closed) and its structure readable, no span carries
/// what `leaks` finds, and the failure is counted as `failure`. `what` names the case in
/// assertion messages. Returns the spans received.
pub async fn hostile_guest_fails_closed(
    d: &Daemon,
    rx: &Receiver,
    text: &str,
    leaks: fn(&str) -> Vec<&'static str>,
    failure: &str,
    what: &str,
) -> Result<Vec<RecvSpan>> {
    let s = d.create_session().await?;
    let mut sse = d.events(&s, None, None).await?;
    let r = d.prompt(&s, text).await?;
    assert_eq!(r.status, 202, "{what}: {}", r.body);
    let id = r.body["promptId"].as_str().unwrap().to_string();
    let frames = sse.until_turn_end(&id).await?;
    assert_eq!(frames.last().unwrap().event, "turn_complete", "{what}");
    // An error response still renders (the error hook falls back to the daemon's wording).
    let missing = d.get("/session/nope").await?;
    assert_eq!(missing.status, 404, "{what}");
    assert_eq!(missing.body["code"], "session_not_found", "{what}");
    assert_eq!(d.get("/health").await?.status, 200, "{what}");

    let is_dispatch = |s: &RecvSpan| {
        s.name == "bridge prompt.dispatch" && s.attr_str("acpd.prompt.id") == Some(&id)
    };
    let spans = rx
        .wait_for_spans(WAIT, |spans| spans.iter().any(is_dispatch))
        .await?;
    let dispatch = spans.iter().find(|s| is_dispatch(s)).unwrap();
    assert_eq!(
        dispatch.attr_str("gen_ai.input.messages"),
        Some("[REDACTED]"),
        "{what}"
    );
    // Structure stays readable while content is masked.
    assert_eq!(
        dispatch.attr_str("session.id"),
        Some(s.id.as_str()),
        "{what}"
    );
    for span in &spans {
        let found = leaks(&span_text(span));
        assert!(
            found.is_empty(),
            "{what}: span {} leaked {found:?}",
            span.name
        );
    }
    wait_for_plugin_failure(d, failure)
        .await
        .map_err(|e| e.context(what.to_string()))?;
    Ok(spans)
}
