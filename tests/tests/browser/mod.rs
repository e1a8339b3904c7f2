//! Headless Chromium driven over the DevTools protocol (one WebSocket, flattened target
//! sessions): enough for the console's tests and screenshots. `Browser::launch` answers `None`
//! when no Chromium is installed (Debian's `chromium`, or `ACPD_CHROMIUM`), and the tests then
//! print "skipped: ..." and pass.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

struct Cdp {
    tx: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next: AtomicU64,
    /// Every event received, with its session id (`method`, `params`, `sessionId`).
    events: Arc<Mutex<Vec<Value>>>,
}

impl Cdp {
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.tx
            .send(Message::text(msg.to_string()))
            .map_err(|_| anyhow!("browser connection closed"))?;
        let reply = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .with_context(|| format!("{method}: no reply"))?
            .map_err(|_| anyhow!("{method}: connection closed"))?;
        if let Some(e) = reply.get("error") {
            bail!("{method}: {e}");
        }
        Ok(reply["result"].clone())
    }
}

pub struct Browser {
    child: tokio::process::Child,
    cdp: Arc<Cdp>,
    _profile: tempfile::TempDir,
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ACPD_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

impl Browser {
    /// Starts headless Chromium, or `Ok(None)` with the reason printed when there is none.
    pub async fn launch() -> Result<Option<Browser>> {
        let Some(bin) = find_chromium() else {
            println!(
                "skipped: no chromium on PATH (apt-get install chromium, or set ACPD_CHROMIUM)"
            );
            return Ok(None);
        };
        let profile = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--hide-scrollbars",
                "--force-color-profile=srgb",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("DevTools listening on ") {
                    return Some(rest.trim().to_string());
                }
            }
            None
        })
        .await
        .context("chromium did not start in time")?
        .context("chromium exited before listening")?;
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        {
            let (pending, events, tx) = (pending.clone(), events.clone(), tx.clone());
            tokio::spawn(async move {
                while let Some(Ok(m)) = stream.next().await {
                    let Ok(text) = m.to_text() else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(text) else {
                        continue;
                    };
                    if let Some(id) = v.get("id").and_then(Value::as_u64) {
                        if let Some(reply) = pending.lock().unwrap().remove(&id) {
                            let _ = reply.send(v);
                        }
                        continue;
                    }
                    // A dialog must be answered or the page stays blocked; the tests read
                    // that it opened from the event log.
                    if v["method"] == "Page.javascriptDialogOpening" {
                        let msg = json!({"id": 0, "method": "Page.handleJavaScriptDialog",
                            "params": {"accept": false}, "sessionId": v["sessionId"]});
                        let _ = tx.send(Message::text(msg.to_string()));
                    }
                    events.lock().unwrap().push(v);
                }
            });
        }
        Ok(Some(Browser {
            child,
            cdp: Arc::new(Cdp {
                tx,
                pending,
                next: AtomicU64::new(1),
                events,
            }),
            _profile: profile,
        }))
    }

    /// A new tab of `width` x `height` CSS pixels.
    pub async fn page(&self, width: u32, height: u32) -> Result<Page> {
        let t = self
            .cdp
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target = t["targetId"].as_str().context("targetId")?.to_string();
        let a = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await?;
        let session = a["sessionId"].as_str().context("sessionId")?.to_string();
        let page = Page {
            cdp: self.cdp.clone(),
            session,
        };
        page.call("Page.enable", json!({})).await?;
        page.call("Runtime.enable", json!({})).await?;
        page.call("Network.enable", json!({})).await?;
        page.call("Log.enable", json!({})).await?;
        page.resize(width, height, false).await?;
        Ok(page)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
}

impl Page {
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.cdp.call(Some(&self.session), method, params).await
    }

    pub async fn resize(&self, width: u32, height: u32, mobile: bool) -> Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await?;
        Ok(())
    }

    /// `prefers-color-scheme`: `light` or `dark`.
    pub async fn color_scheme(&self, scheme: &str) -> Result<()> {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        )
        .await?;
        Ok(())
    }

    /// Navigates and waits for the document to be complete.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call("Page.navigate", json!({"url": url})).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.wait(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        )
        .await?;
        Ok(())
    }

    /// Evaluates `expr` (promises awaited) and returns its JSON value.
    pub async fn eval(&self, expr: &str) -> Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true, "userGesture": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!(
                "{expr}: {}",
                e["exception"]["description"]
                    .as_str()
                    .unwrap_or(&e.to_string())
            );
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expr` until it is truthy; returns its value. The error shows the page's text.
    pub async fn wait(&self, expr: &str, within: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = self.eval(expr).await.unwrap_or(Value::Null);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                let text = self
                    .eval("document.body ? document.body.innerText.slice(-3000) : ''")
                    .await
                    .unwrap_or_default();
                bail!(
                    "timed out waiting for {expr}; the page shows:\n{}\nits errors: {:#?}",
                    text.as_str().unwrap_or(""),
                    self.errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the first element matching `selector` (by its DOM click: the tests drive the
    /// page as a keyboard or pointer user would, through the page's own handlers).
    pub async fn click(&self, selector: &str) -> Result<()> {
        let sel = serde_json::to_string(selector)?;
        self.wait(
            &format!("!!document.querySelector({sel})"),
            Duration::from_secs(20),
        )
        .await?;
        self.eval(&format!("document.querySelector({sel}).click(), true"))
            .await?;
        Ok(())
    }

    /// Types `text` into the focused-by-selector field as key input.
    pub async fn type_into(&self, selector: &str, text: &str) -> Result<()> {
        let sel = serde_json::to_string(selector)?;
        self.wait(
            &format!("!!document.querySelector({sel})"),
            Duration::from_secs(20),
        )
        .await?;
        self.eval(&format!("document.querySelector({sel}).focus(), true"))
            .await?;
        self.call("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// Presses Enter in the focused element.
    pub async fn press_enter(&self) -> Result<()> {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}),
            )
            .await?;
        }
        Ok(())
    }

    /// Presses a key (`ArrowDown`, `Tab`, ...) in the focused element.
    pub async fn press_key(&self, key: &str, vk: u32) -> Result<()> {
        for kind in ["rawKeyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": vk}),
            )
            .await?;
        }
        Ok(())
    }

    /// Cuts the network (open connections fail) or restores it.
    pub async fn offline(&self, offline: bool) -> Result<()> {
        self.call(
            "Network.emulateNetworkConditions",
            json!({"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}),
        )
        .await?;
        Ok(())
    }

    /// The events of this tab whose method is `method`.
    pub fn events(&self, method: &str) -> Vec<Value> {
        self.cdp
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["sessionId"] == self.session.as_str() && e["method"] == method)
            .cloned()
            .collect()
    }

    /// Script exceptions and console/log errors of this tab.
    pub fn errors(&self) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .events("Runtime.exceptionThrown")
            .into_iter()
            .map(|e| e["params"]["exceptionDetails"].clone())
            .collect();
        out.extend(
            self.events("Log.entryAdded")
                .into_iter()
                .map(|e| e["params"]["entry"].clone())
                .filter(|e| e["level"] == "error"),
        );
        out
    }

    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().context("data")?)?;
        std::fs::write(path, png)?;
        Ok(())
    }
}
