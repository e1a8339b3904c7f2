//! The web console at `/`, in a real browser (headless Chromium over the DevTools protocol)
//! against the real daemon and the demo agent: a prompt's streamed reply, a write approved and
//! its file written, a slow turn cancelled and a queued prompt removed, a second tab voting
//! first, a cut event stream recovered without loss or duplicates, a turn's trace opened,
//! hostile agent output kept inert, the sign-in when a token is required, and the model and
//! approval-mode pickers (switched by keyboard, followed by a second tab, a refused model shown
//! and reverted, none for an agent that announces neither). Without Chromium
//! the browser tests print "skipped: <reason>". The served pages' headers are checked without a
//! browser.
//!
//! `ACPD_CONSOLE_SCREENSHOTS=<dir>` makes `screenshots` write the README's pictures there
//! (`tests/scripts/console-screenshots.sh`).

mod browser;

use acpd_tests::*;
use anyhow::{Context, Result, ensure};
use browser::{Browser, Page};
use serde_json::{Value, json};
use std::time::Duration;

const UI: Duration = Duration::from_secs(20);

/// One browser at a time: the machine is shared and Chromium is heavy.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn daemon(args: &[&str]) -> Result<Daemon> {
    Daemon::builder()
        .args(args)
        // Spans reach the trace view within ~100 ms of their end.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Opens the console, creates a session with the button, and returns its id.
async fn new_session(page: &Page, d: &Daemon) -> Result<String> {
    page.goto(&d.url("/")).await?;
    new_session_here(page).await
}

/// Opens a new session from the console's page as loaded.
async fn new_session_here(page: &Page) -> Result<String> {
    page.click("button[data-action=new-session]").await?;
    let id = page
        .wait(
            "document.querySelector('section.session')?.dataset.sessionId",
            UI,
        )
        .await?;
    page.wait(
        "document.querySelector('.sess-head .pill[data-state=live]')",
        UI,
    )
    .await?;
    Ok(id.as_str().context("session id")?.to_string())
}

/// Holds the first response for a session's pending prompts until `releaseQueueSnapshot()` (true once
/// it was fetched); `queueSnapshots` counts the fetches.
const HOLD_QUEUE_SNAPSHOT: &str = r#"(() => {
  const real = window.fetch;
  let release = null;
  window.queueSnapshots = 0;
  window.releaseQueueSnapshot = () => { if (!release) return false; release(); return true; };
  window.fetch = (url, opts) => {
    const r = real.call(window, url, opts);
    if (!String(url).endsWith('/pending-prompts')) return r;
    if (++window.queueSnapshots > 1) return r;
    return new Promise(done => { release = () => done(r); });
  };
  return true;
})()"#;

async fn send(page: &Page, text: &str) -> Result<()> {
    page.type_into("#prompt", text).await?;
    page.press_enter().await
}

/// The number of turns that ended, as shown.
async fn ended(page: &Page) -> Result<u64> {
    Ok(page
        .eval("document.querySelectorAll('.turn-end').length")
        .await?
        .as_u64()
        .unwrap_or(0))
}

async fn wait_ended(page: &Page, n: u64) -> Result<()> {
    page.wait(
        &format!("document.querySelectorAll('.turn-end').length >= {n}"),
        UI,
    )
    .await?;
    Ok(())
}

/// The demo agent's echo of `text`.
fn said(text: &str) -> String {
    format!("Hello from the demo agent. You said: {text}")
}

fn agent_texts_js() -> &'static str {
    "[...document.querySelectorAll('.msg.agent')].map(m => m.textContent)"
}

#[tokio::test]
async fn pages_are_served_with_a_strict_policy_to_any_browser_the_guards_admit() -> Result<()> {
    let d = daemon(&["--token", "console-token-7f3a"]).await?;
    for path in [
        "/",
        "/debug/traces",
        "/console/console.js",
        "/console/style.css",
    ] {
        // Public without the token: static files; their scripts send it on API requests.
        let r = d.send(d.http.get(d.url(path))).await?;
        assert_eq!(r.status, 200, "{path}");
        let h = |n: &str| {
            r.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let csp = h("content-security-policy");
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
    }
    let r = d.send(d.http.get(d.url("/"))).await?;
    assert!(r.headers["content-type"].to_str()?.starts_with("text/html"));
    let r = d.send(d.http.get(d.url("/console/console.js"))).await?;
    assert!(
        r.headers["content-type"]
            .to_str()?
            .starts_with("text/javascript")
    );
    // Only the embedded files: no pages, no paths.
    for path in [
        "/console/nope.js",
        "/console/console.html",
        "/console/..%2FCargo.toml",
    ] {
        let r = d.send(d.http.get(d.url(path))).await?;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.body["code"], "asset_not_found", "{path}");
    }
    let r = d.send(d.http.get(d.url("/console/a/b.js"))).await?;
    assert_eq!(
        r.status, 401,
        "nested paths are not console files: {}",
        r.body
    );
    // The API the console uses is still guarded.
    assert_eq!(d.get("/capabilities").await?.status, 200);
    assert_eq!(d.get("/workspace/x/sessions").await?.status, 401);
    // The Host guard applies to the console too (DNS rebinding).
    let r = d
        .send(d.http.get(d.url("/")).header("Host", "evil.test"))
        .await?;
    assert_eq!(r.status, 403);
    Ok(())
}

#[tokio::test]
async fn a_prompt_streams_its_reply_and_its_turn_opens_its_trace() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let Some(b) = Browser::launch().await? else {
        return Ok(());
    };
    let d = daemon(&[]).await?;
    let page = b.page(1280, 860).await?;
    let id = new_session(&page, &d).await?;
    // The list shows it, with its agent once one serves it.
    send(&page, "hello from the console").await?;
    wait_ended(&page, 1).await?;
    let shown = page.eval(agent_texts_js()).await?;
    assert_eq!(
        shown,
        json!([said("hello from the console")]),
        "echoed once"
    );
    let user = page
        .eval("[...document.querySelectorAll('.msg.user')].map(m => m.textContent)")
        .await?;
    assert_eq!(user, json!(["hello from the console"]));
    let end = page
        .eval("(e => ({stop: e.dataset.stopReason, text: e.textContent, href: e.querySelector('a.trace')?.getAttribute('href')}))(document.querySelector('.turn-end'))")
        .await?;
    assert_eq!(end["stop"], "end_turn", "{end}");
    assert!(
        end["text"].as_str().unwrap().contains("ms"),
        "a duration: {end}"
    );
    let href = end["href"].as_str().context("a trace link")?.to_string();
    let trace_id = href
        .strip_prefix("/debug/traces#")
        .context("trace link")?
        .to_string();
    assert_eq!(trace_id.len(), 32, "{href}");
    page.wait(
        &format!("document.querySelector('a.sess[data-session-id={}] .meta')?.textContent.includes('alive')", js(&id)),
        UI,
    )
    .await?;

    // The link opens the trace view on that trace (its spans arrive within ~100 ms).
    let mut opened = Value::Null;
    for _ in 0..20 {
        page.goto(&d.url(&href)).await?;
        opened = page
            .wait(
                "document.querySelector('#head h2, #head .empty')?.textContent",
                UI,
            )
            .await?;
        if opened == "POST /session/{id}/prompt" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(opened, "POST /session/{id}/prompt");
    let head = page
        .eval("document.querySelector('#head').textContent")
        .await?;
    assert!(head.as_str().unwrap().contains(&trace_id), "{head}");
    page.wait("[...document.querySelectorAll('#wf .row .t')].some(t => t.textContent === 'acp session/prompt')", UI)
        .await?;
    Ok(())
}

#[tokio::test]
async fn approving_a_write_shows_its_diff_and_writes_the_file() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let Some(b) = Browser::launch().await? else {
        return Ok(());
    };
    let d = daemon(&[]).await?;
    let page = b.page(1280, 860).await?;
    new_session(&page, &d).await?;
    send(
        &page,
        "write notes/console.txt written after a vote in the browser",
    )
    .await?;
    page.wait(
        "document.querySelector('.card.permission button[data-option-id=allow]')",
        UI,
    )
    .await?;
    // The tool call and the request show the diff of the new file.
    let diff = page
        .eval("[...document.querySelectorAll('.card.permission .diff .ln.add')].map(l => l.textContent)")
        .await?;
    assert_eq!(
        diff,
        json!(["+ written after a vote in the browser"]),
        "{diff}"
    );
    let tool = page
        .eval("(c => c && {kind: c.querySelector('.pill.kind').textContent, loc: c.querySelector('.loc').textContent})(document.querySelector('.card.tool'))")
        .await?;
    assert_eq!(tool["kind"], "edit", "{tool}");
    assert!(
        tool["loc"].as_str().unwrap().ends_with("notes/console.txt"),
        "{tool}"
    );
    assert!(
        !d.ws_path.join("notes/console.txt").exists(),
        "not before the vote"
    );

    page.click(".card.permission button[data-option-id=allow]")
        .await?;
    page.wait(
        "document.querySelector('.card.permission.resolved')?.dataset.outcome === 'allow'",
        UI,
    )
    .await?;
    wait_ended(&page, 1).await?;
    page.wait(
        "document.querySelector('.card.tool')?.dataset.status === 'completed'",
        UI,
    )
    .await?;
    let voter = page
        .eval("document.querySelector('.card.permission').dataset.voter")
        .await?;
    assert_eq!(voter, "you");
    let written = std::fs::read_to_string(d.ws_path.join("notes/console.txt"))?;
    assert_eq!(written, "written after a vote in the browser");
    Ok(())
}

#[tokio::test]
async fn a_slow_turn_is_cancelled_and_a_queued_prompt_removed() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let Some(b) = Browser::launch().await? else {
        return Ok(());
    };
    let d = daemon(&[]).await?;
    let page = b.page(1280, 860).await?;
    // The queue's snapshot, fetched as the session's replay completes, is held until the prompt below
    // runs: it then predates the prompt's events and must not erase them (it once did, and Cancel,
    // enabled only while a prompt runs, stayed disabled).
    page.goto(&d.url("/")).await?;
    page.eval(HOLD_QUEUE_SNAPSHOT).await?;
    new_session_here(&page).await?;
    send(&page, "slow 200 100").await?;
    page.wait(
        "document.querySelector('.msg.agent')?.textContent.includes('tick 3')",
        UI,
    )
    .await?;
    assert_eq!(
        page.eval("window.releaseQueueSnapshot()").await?,
        json!(true),
        "the snapshot was fetched and held"
    );
    page.wait(
        "window.queueSnapshots >= 2 && !document.querySelector('button[data-action=cancel]').disabled",
        UI,
    )
    .await?;
    send(&page, "never runs").await?;
    page.wait(
        "document.querySelector('.queue .q[data-state=queued] button[data-action=remove]')",
        UI,
    )
    .await?;
    page.click(".queue .q[data-state=queued] button[data-action=remove]")
        .await?;
    page.wait(
        "!document.querySelector('.queue .q[data-state=queued]')",
        UI,
    )
    .await?;
    page.click("button[data-action=cancel]").await?;
    page.wait(
        "document.querySelector('.turn-end')?.dataset.stopReason === 'cancelled'",
        UI,
    )
    .await?;
    page.wait(
        "document.querySelector('button[data-action=cancel]').disabled",
        UI,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ended(&page).await?, 1, "the removed prompt never ran");
    let ticks = page
        .eval("document.querySelector('.msg.agent').textContent")
        .await?;
    assert!(!ticks.as_str().unwrap().contains("tick 200"), "{ticks}");
    Ok(())
}

#[tokio::test]
async fn a_second_tab_votes_first_and_both_tabs_agree() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let Some(b) = Browser::launch().await? else {
        return Ok(());
    };
    let d = daemon(&[]).await?;
    let a = b.page(1000, 800).await?;
    let id = new_session(&a, &d).await?;
    let second = b.page(1000, 800).await?;
    second.goto(&d.url(&format!("/#/s/{id}"))).await?;
    second
        .wait(
            "document.querySelector('.sess-head .pill[data-state=live]')",
            UI,
        )
        .await?;
    send(&a, "write voted.txt the second tab said yes").await?;
    let button = ".card.permission button[data-option-id=allow]";
    a.wait(&format!("document.querySelector('{button}')"), UI)
        .await?;
    second
        .wait(&format!("document.querySelector('{button}')"), UI)
        .await?;
    second.click(button).await?;
    // The first tab learns it live: resolved by another client, its buttons disabled.
    a.wait(
        "document.querySelector('.card.permission.resolved')?.dataset.voter === 'another client'",
        UI,
    )
    .await?;
    let disabled = a
        .eval("[...document.querySelectorAll('.card.permission button')].every(b => b.disabled)")
        .await?;
    assert_eq!(disabled, true);
    wait_ended(&a, 1).await?;
    wait_ended(&second, 1).await?;
    assert_eq!(
        std::fs::read_to_string(d.ws_path.join("voted.txt"))?,
        "the second tab said yes"
    );
    // The same transcript in both.
    let snapshot =
        "[...document.querySelectorAll('.turn > *')].map(e => e.className + ':' + e.textContent)";
    a.wait(
        "document.querySelector('.card.tool')?.dataset.status === 'completed'",
        UI,
    )
    .await?;
    second
        .wait(
            "document.querySelector('.card.tool')?.dataset.status === 'completed'",
            UI,
        )
        .await?;
    let (ta, tb) = (a.eval(snapshot).await?, second.eval(snapshot).await?);
    let strip = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s.as_str()
                    .unwrap()
                    .replace("answered by you", "")
                    .replace("answered by another client", "")
            })
            .collect()
    };
    assert_eq!(strip(&ta), strip(&tb));
    Ok(())
}

/// A picker's options and shown value (`null` when it is not shown).
async fn picker(page: &Page, kind: &str) -> Result<Value> {
    page.eval(&format!(
        "(s => s && !s.closest('.hidden') ? {{value: s.value, options: [...s.options].map(o => o.value), \
         label: document.querySelector('label[for=' + s.id + ']')?.textContent}} : null)\
         (document.getElementById('{kind}-picker'))"
    ))
    .await
}

/// Waits until tab `page` shows `value` in the `kind` picker.
async fn wait_picker(page: &Page, kind: &str, value: &str) -> Result<()> {
    page.wait(
        &format!(
            "(s => s && !s.closest('.hidden') && s.value === {v} && s.dataset.current === {v})(document.getElementById('{kind}-picker'))",
            v = js(value)
        ),
        UI,
    )
    .await?;
    Ok(())
}

/// Chooses `value` in a picker as a pointer user does (the select's change event).
async fn choose(page: &Page, kind: &str, value: &str) -> Result<()> {
    page.eval(&format!(
        "(s => {{ s.value = {}; s.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})(document.getElementById('{kind}-picker'))",
        js(value)
    ))
    .await?;
    Ok(())
}

#[tokio::test]
async fn model_and_mode_pickers_switch_the_agent_and_agree_across_tabs() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let Some(b) = Browser::launch().await? else {
        return Ok(());
    };
    let d = daemon(&[]).await?;
    let a = b.page(1000, 800).await?;
    let id = new_session(&a, &d).await?;
    wait_picker(&a, "mode", "default").await?;
    wait_picker(&a, "model", "demo-fast").await?;
    assert_eq!(
        picker(&a, "mode").await?,
        json!({"value": "default", "options": ["default", "plan", "auto-edit", "yolo"], "label": "Approval mode"})
    );
    assert_eq!(
        picker(&a, "model").await?,
        json!({"value": "demo-fast", "options": ["demo-fast", "demo-smart", "demo-broken"], "label": "Model"})
    );
    let second = b.page(1000, 800).await?;
    second.goto(&d.url(&format!("/#/s/{id}"))).await?;
    second
        .wait(
            "document.querySelector('.sess-head .pill[data-state=live]')",
            UI,
        )
        .await?;
    wait_picker(&second, "mode", "default").await?;

    // The mode by keyboard in the first tab: the second follows live, and the daemon agrees.
    a.eval("document.getElementById('mode-picker').focus(), true")
        .await?;
    a.press_key("ArrowDown", 40).await?;
    wait_picker(&a, "mode", "plan").await?;
    wait_picker(&second, "mode", "plan").await?;
    let cx = d.get(&format!("/session/{id}/context")).await?.body;
    assert_eq!(cx["state"]["modes"]["currentModeId"], "plan", "{cx}");

    // The model from the second tab: the first follows.
    choose(&second, "model", "demo-smart").await?;
    wait_picker(&second, "model", "demo-smart").await?;
    wait_picker(&a, "model", "demo-smart").await?;

    // A model the agent refuses: the failure is shown and the select goes back, in both tabs.
    choose(&a, "model", "demo-broken").await?;
    for page in [&a, &second] {
        let note = page
            .wait(
                "(n => n && n.textContent.includes('demo-broken') && n.textContent)(document.querySelector('.sess-bar .picker-note'))",
                UI,
            )
            .await?;
        assert!(
            note.as_str()
                .unwrap()
                .contains("Could not switch the model"),
            "{note}"
        );
        wait_picker(page, "model", "demo-smart").await?;
    }
    let cx = d.get(&format!("/session/{id}/context")).await?.body;
    assert_eq!(
        cx["state"]["configOptions"][0]["currentValue"],
        "demo-smart"
    );

    // The agent switches itself (current_mode_update): both tabs follow.
    send(&second, "mode yolo").await?;
    wait_picker(&a, "mode", "yolo").await?;
    wait_picker(&second, "mode", "yolo").await?;
    // No script errors (the refused switch's 502 is logged by the browser as a network error).
    for page in [&a, &second] {
        let errors: Vec<Value> = page
            .errors()
            .into_iter()
            .filter(|e| e["source"] != "network")
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }
    Ok(())
}

#[tokio::test]
async fn an_agent_that_announces_no_models_or_modes_shows_no_pickers() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let Some(b) = Browser::launch().await? else {
        return Ok(());
    };
    let d = Daemon::builder()
        .config("[agent.env]\nACPD_DEMO_PLAIN = \"1\"\n")
        .start()
        .await?;
    let page = b.page(1000, 800).await?;
    new_session(&page, &d).await?;
    page.wait(
        "document.querySelector('section.session')?.dataset.context === 'loaded'",
        UI,
    )
    .await?;
    let shown = page
        .eval("[...document.querySelectorAll('.sess-bar, .picker, select')].filter(e => e.offsetParent !== null).length")
        .await?;
    assert_eq!(shown, json!(0));
    assert_eq!(picker(&page, "mode").await?, Value::Null);
    assert_eq!(picker(&page, "model").await?, Value::Null);
    Ok(())
}

#[tokio::test]
async fn a_cut_event_stream_reconnects_without_loss_or_duplicates() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let Some(b) = Browser::launch().await? else {
        return Ok(());
    };
    let d = daemon(&[]).await?;
    let page = b.page(1280, 860).await?;
    let id = new_session(&page, &d).await?;
    send(&page, "before the cut").await?;
    wait_ended(&page, 1).await?;

    let connects = "window.acpdConsole.current.stream.connects";
    assert_eq!(page.eval(connects).await?, 1);
    // The network goes away: no new connection can be made, and the open stream is cut.
    page.offline(true).await?;
    cut_connections(&page, d.port).await?;
    page.wait(
        "document.querySelector('.sess-head .pill[data-state=reconnecting]')",
        UI,
    )
    .await?;
    // Meanwhile another client prompts the session.
    let other = d.create_session_with(json!({"sessionId": id})).await?;
    let r = d.prompt(&other, "while the tab was offline").await?;
    ensure!(r.status == 202, "{}", r.body);
    let mut idle = false;
    for _ in 0..100 {
        let s = d.get(&format!("/session/{id}")).await?;
        if s.body["state"] == "idle" && s.body["lastEventId"].as_u64() > Some(8) {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle);

    page.offline(false).await?;
    page.wait(
        "document.querySelector('.sess-head .pill[data-state=live]')",
        UI,
    )
    .await?;
    wait_ended(&page, 2).await?;
    assert_eq!(page.eval(connects).await?, 2, "one reconnect");
    send(&page, "after the cut").await?;
    wait_ended(&page, 3).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shown = page.eval(agent_texts_js()).await?;
    assert_eq!(
        shown,
        json!([
            said("before the cut"),
            said("while the tab was offline"),
            said("after the cut")
        ]),
        "each message once, in order"
    );
    assert_eq!(ended(&page).await?, 3);
    Ok(())
}

/// Cuts the browser's open connections to the daemon as a network failure would: the kernel
/// aborts the sockets (`ss -K`, root on Linux). Where that is not possible, the console's own
/// stream is aborted from the page instead (the same path through its reconnect logic).
async fn cut_connections(page: &Page, port: u16) -> Result<()> {
    let killed = tokio::process::Command::new("ss")
        .args(["-K", "dst", "127.0.0.1", "dport", "=", &port.to_string()])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    let cut = "document.querySelector('.sess-head .pill[data-state=reconnecting]')";
    if killed && page.wait(cut, Duration::from_secs(5)).await.is_ok() {
        return Ok(());
    }
    println!("note: `ss -K` could not cut the socket; aborting the stream from the page");
    page.eval("window.acpdConsole.current.stream.drop(), true")
        .await?;
    Ok(())
}

#[tokio::test]
async fn hostile_agent_output_never_runs_script() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let Some(b) = Browser::launch().await? else {
        return Ok(());
    };
    let d = daemon(&[]).await?;
    let page = b.page(1280, 860).await?;
    new_session(&page, &d).await?;
    page.eval("window.__violations = 0; document.addEventListener('securitypolicyviolation', () => window.__violations++); true")
        .await?;
    // The demo agent echoes it back: the agent's own message carries every payload.
    let hostile = "<img src=x onerror=\"window.__pwned=1;alert(1)\"> \
        [click me](javascript:window.__pwned=2) <script>window.__pwned=3</script> \
        [data](data:text/html,<script>alert(4)</script>) <a href=\"javascript:alert(5)\">a</a> \
        <svg onload=alert(6)> **bold** `code` [safe](https://example.com/x)";
    send(&page, hostile).await?;
    wait_ended(&page, 1).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let facts = page
        .eval(
            "(m => ({
                pwned: window.__pwned ?? null,
                violations: window.__violations,
                text: m.textContent,
                elements: [...m.querySelectorAll('*')].map(e => e.tagName.toLowerCase()),
                hrefs: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
                safe: (a => a && {rel: a.rel, target: a.target})(m.querySelector('a')),
                scripts: document.scripts.length,
            }))(document.querySelector('.msg.agent'))",
        )
        .await?;
    assert_eq!(facts["pwned"], Value::Null, "{facts}");
    assert_eq!(facts["violations"], 0, "nothing tried to run: {facts}");
    assert!(
        page.events("Page.javascriptDialogOpening").is_empty(),
        "an alert opened"
    );
    let elements: Vec<&str> = facts["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for tag in ["img", "script", "svg", "iframe"] {
        assert!(!elements.contains(&tag), "{tag} built: {facts}");
    }
    assert!(
        elements.contains(&"strong") && elements.contains(&"code"),
        "{facts}"
    );
    let hrefs = facts["hrefs"].as_array().unwrap();
    assert!(
        hrefs.iter().all(|h| {
            let h = h.as_str().unwrap();
            h.starts_with("https://") || h.starts_with('#') || h.starts_with('/')
        }),
        "{facts}"
    );
    assert!(hrefs.contains(&json!("https://example.com/x")), "{facts}");
    assert!(
        facts["safe"]["rel"].as_str().unwrap().contains("noopener"),
        "{facts}"
    );
    let text = facts["text"].as_str().unwrap();
    assert!(
        text.contains("<img src=x onerror="),
        "shown as text: {text}"
    );
    assert!(text.contains("<script>window.__pwned=3</script>"), "{text}");
    assert_eq!(facts["scripts"], 1, "only the console's module: {facts}");
    Ok(())
}

#[tokio::test]
async fn a_required_token_is_asked_once_and_sent_as_a_header() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let Some(b) = Browser::launch().await? else {
        return Ok(());
    };
    let token = "console-sign-in-91c2";
    let d = daemon(&["--token", token, "--require-auth"]).await?;
    let page = b.page(1000, 800).await?;
    page.goto(&d.url("/")).await?;
    page.wait("document.querySelector('dialog.signin[open]')", UI)
        .await?;
    page.type_into("#signin-token", token).await?;
    page.click("dialog.signin button[type=submit]").await?;
    page.wait("!document.querySelector('dialog.signin[open]')", UI)
        .await?;
    page.click("button[data-action=new-session]").await?;
    page.wait(
        "document.querySelector('.sess-head .pill[data-state=live]')",
        UI,
    )
    .await?;
    send(&page, "signed in").await?;
    wait_ended(&page, 1).await?;
    let facts = page
        .eval("({stored: sessionStorage.getItem('acpd.token'), url: location.href, local: localStorage.length})")
        .await?;
    assert_eq!(facts["stored"], token);
    assert!(!facts["url"].as_str().unwrap().contains(token), "{facts}");
    assert_eq!(facts["local"], 0, "not kept beyond the tab");
    // The trace view in the same tab uses the same sign-in, without the token in its URL.
    page.goto(&d.url("/debug/traces")).await?;
    page.wait(
        "document.querySelector('#msg')?.textContent.includes('recent trace')",
        UI,
    )
    .await?;
    Ok(())
}

/// The README's pictures: `ACPD_CONSOLE_SCREENSHOTS=<dir>` (see the script); a no-op otherwise.
#[tokio::test]
async fn screenshots() -> Result<()> {
    let Some(dir) = std::env::var_os("ACPD_CONSOLE_SCREENSHOTS") else {
        return Ok(());
    };
    let dir = std::path::PathBuf::from(dir);
    let _one = ONE_BROWSER.lock().await;
    let Some(b) = Browser::launch().await? else {
        anyhow::bail!("screenshots need chromium");
    };
    let d = Daemon::builder()
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .file("src/greeting.txt", "hello\n")
        .start()
        .await?;
    let page = b.page(1280, 800).await?;
    page.color_scheme("light").await?;
    // A few sessions in the list.
    for _ in 0..2 {
        d.create_session_with(json!({"sessionScope": "thread"}))
            .await?;
    }
    let id = new_session(&page, &d).await?;
    send(&page, "Summarise **acpd** in one line: it serves `ACP` agents over HTTP, with a trace for every turn.").await?;
    wait_ended(&page, 1).await?;
    send(
        &page,
        "write src/notes.md # Notes\n\n- written by the demo agent\n- after a vote in the console",
    )
    .await?;
    page.wait(
        "document.querySelector('.card.permission button[data-option-id=allow]')",
        UI,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    page.screenshot(&dir.join("console-permission.png")).await?;
    page.click(".card.permission button[data-option-id=allow]")
        .await?;
    wait_ended(&page, 2).await?;
    page.wait(
        "document.querySelector('.card.tool')?.dataset.status === 'completed'",
        UI,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    page.screenshot(&dir.join("console-turn.png")).await?;

    // The phone layout, dark: the session list, then the session.
    let phone = b.page(390, 844).await?;
    phone.resize(390, 844, true).await?;
    phone.color_scheme("dark").await?;
    phone.goto(&d.url("/")).await?;
    phone
        .wait(&format!("document.querySelector('a.sess[data-session-id={}] .meta')?.textContent.includes('alive')", js(&id)), UI)
        .await?;
    phone
        .screenshot(&dir.join("console-sessions-phone.png"))
        .await?;
    phone.goto(&d.url(&format!("/#/s/{id}"))).await?;
    wait_ended(&phone, 2).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    phone
        .screenshot(&dir.join("console-session-phone-dark.png"))
        .await?;

    // The write turn's trace.
    let href = page
        .eval("[...document.querySelectorAll('.turn-end a.trace')].pop().getAttribute('href')")
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    page.goto(&d.url(href.as_str().context("href")?)).await?;
    page.wait("[...document.querySelectorAll('#wf .row .t')].some(t => t.textContent.startsWith('permission.wait'))", UI)
        .await?;
    page.click("#wf .row.sel").await.ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    page.screenshot(&dir.join("console-trace.png")).await?;
    println!("screenshots written to {}", dir.display());
    Ok(())
}
