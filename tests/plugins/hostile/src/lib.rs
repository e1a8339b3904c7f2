//! Test fixture: a plugin that misbehaves on purpose. One component serves every fault test;
//! its config's `mode` picks the misbehaviour, at every hook:
//! `ok` (no edits), `tag` (marks every span, proving it ran), `trap`, `loop` (never returns),
//! `alloc` (touches 1 GiB), `huge-output` (far more edits than allowed), `bad-index`
//! (out-of-range indexes), `flaky` (fails every other call), `error-5xx` (an invalid error
//! translation), `panic-init`, `bad-config` (refuses its config), `escape` (tries to reach files,
//! sockets, env, args and the clock, at init and at every span batch, and reports each outcome
//! as a `hostile.escape.*` span attribute: the sandbox must deny them all).
//!
//! Host-kernel abuse: `bomb` (compiles 256 patterns like `\w{12}[[:alpha:]]{6}k<i>_<j>` in
//! init and again at every hook: a compile-time and memory bomb for the regex engine),
//! `hoard` (compiles up to 300 one-pattern sets at every call and keeps them all),
//! `host-loop` (calls the pattern kernel in an endless loop). `spin` runs `iterations` turns of
//! a loop and returns (benchmarks: cost per guest instruction). `echo` is not hostile: it
//! answers every span and log attribute (and every `request` fact) with an `echo.<key>` upsert on
//! the same record, holding
//! the value as it arrived (an array as `array:<its JSON>`), replaces an attribute whose key
//! starts with `r.` by a value of the same kind (`r:` + text, `!` bool, `+1`, `×2`) and removes
//! one whose key starts with `x.`, and reports each span's name, kind and error flag and each
//! log's body, severity and event name as `echo.record.*`, to check what crosses the boundary
//! both ways.

use acpd_plugin_sdk::{
    AttrValue, Attrs, ClientError, Config, Edits, Error, ErrorInfo, ErrorTranslator, LogBatch,
    LogEdits, LogProcessor, Observer, PatternSet, Plugin, SpanBatch, SpanEdits, SpanProcessor,
    Value, export_plugin,
};

#[derive(serde::Deserialize)]
struct Cfg {
    mode: String,
    /// `escape`: an address to try a TCP connection to.
    #[serde(default)]
    connect: Option<String>,
    /// `spin`: loop turns per call.
    #[serde(default)]
    iterations: u64,
}

pub struct Hostile {
    mode: String,
    calls: u64,
    connect: Option<String>,
    /// `escape`: what was tried at init, and how it ended.
    at_init: Vec<(String, String)>,
    iterations: u64,
    /// `hoard`: every set compiled so far; `host-loop`: the set it scans with.
    sets: Vec<PatternSet>,
    /// `bomb`, `hoard`: how the last compiles ended (`ok`, or the host's error).
    compiled: Vec<String>,
}

/// 256 patterns of a few Unicode classes each: within every per-call limit (count, bytes),
/// yet tens of MiB of compiled program.
fn bomb_patterns(round: u64) -> Vec<String> {
    (0..256)
        .map(|j| format!(r"\w{{12}}[[:alpha:]]{{6}}k{round}_{j}"))
        .collect()
}

fn outcome(r: &Result<PatternSet, String>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.clone(),
    }
}

/// Every way out of the sandbox that std offers a guest; each outcome is "denied: ..." or
/// "ALLOWED: ...".
fn escape_attempts(connect: Option<&str>) -> Vec<(String, String)> {
    fn shown<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> String {
        match r {
            Ok(v) => format!("ALLOWED: {v:?}"),
            Err(e) => format!("denied: {e}"),
        }
    }
    let mut out = vec![
        (
            "fs_read".into(),
            shown(std::fs::read_to_string("/etc/hostname")),
        ),
        (
            "fs_list".into(),
            shown(std::fs::read_dir(".").map(|d| d.count())),
        ),
        (
            "fs_write".into(),
            shown(std::fs::write("/tmp/acpd-hostile-escape", "x")),
        ),
    ];
    let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    out.push((
        "env".into(),
        if env.is_empty() {
            "denied: no variables".into()
        } else {
            format!("ALLOWED: {env:?}")
        },
    ));
    let args: Vec<String> = std::env::args().collect();
    out.push((
        "args".into(),
        if args.is_empty() {
            "denied: no arguments".into()
        } else {
            format!("ALLOWED: {args:?}")
        },
    ));
    if let Some(addr) = connect {
        out.push(("net".into(), shown(std::net::TcpStream::connect(addr))));
    }
    // The clock is frozen: time does not pass, however much work is done between two reads.
    let (wall, mono) = (std::time::SystemTime::now(), std::time::Instant::now());
    let mut x = 0u64;
    for i in 0..2_000_000u64 {
        x = std::hint::black_box(x.wrapping_add(i));
    }
    out.push((
        "clock".into(),
        if std::time::SystemTime::now() == wall && mono.elapsed().is_zero() {
            "denied: frozen".into()
        } else {
            "ALLOWED: time passes".into()
        },
    ));
    out
}

impl Plugin for Hostile {
    const NAME: &'static str = "hostile";
    const VERSION: &'static str = "0.1.0";

    fn init(config: Config) -> Result<Self, Error> {
        let c: Cfg = config.parse()?;
        match c.mode.as_str() {
            "panic-init" => panic!("hostile: panicking in init on purpose"),
            "bad-config" => Err(Error::config("hostile: this config is refused on purpose")),
            "ok" | "tag" | "trap" | "loop" | "alloc" | "huge-output" | "bad-index" | "flaky"
            | "error-5xx" | "escape" | "spin" | "bomb" | "hoard" | "host-loop" | "echo" => {
                let mut h = Hostile {
                    at_init: if c.mode == "escape" {
                        escape_attempts(c.connect.as_deref())
                    } else {
                        Vec::new()
                    },
                    mode: c.mode,
                    calls: 0,
                    connect: c.connect,
                    iterations: c.iterations,
                    sets: Vec::new(),
                    compiled: Vec::new(),
                };
                match h.mode.as_str() {
                    "bomb" => h.compiled = vec![outcome(&PatternSet::compile(&bomb_patterns(0)))],
                    "host-loop" => {
                        h.sets.push(
                            PatternSet::compile(&["[a-z]+@[a-z]+"])
                                .map_err(|e| Error::config(e.to_string()))?,
                        );
                    }
                    _ => {}
                }
                Ok(h)
            }
            other => Err(Error::config(format!("unknown mode {other:?}"))),
        }
    }
}

impl Hostile {
    /// The misbehaviours shared by every hook; `Ok(true)` = go on with the hook's own answer.
    fn misbehave(&mut self, out: &mut Edits, records: usize) -> Result<bool, Error> {
        self.calls += 1;
        match self.mode.as_str() {
            "trap" => panic!("hostile: trapping on purpose"),
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut v: Vec<u8> = Vec::with_capacity(1 << 30);
                v.resize(1 << 30, 1);
                std::hint::black_box(&v);
                Ok(true)
            }
            "huge-output" => {
                // Far past every output bound: edit count, new keys per record, value size.
                for i in 0..200u32 {
                    out.upsert(0, format!("hostile.k{i}"), "x");
                }
                out.upsert(0, "hostile.big", "x".repeat(64 << 10));
                Ok(false)
            }
            "bad-index" => {
                out.replace(u32::MAX - 1, "x");
                out.remove(records as u32 + 1_000_000);
                Ok(false)
            }
            "flaky" if self.calls.is_multiple_of(2) => Err(Error::failed("hostile: flaky failure")),
            "spin" => {
                let mut x = 0u64;
                for i in 0..self.iterations {
                    x = std::hint::black_box(x.wrapping_add(i));
                }
                Ok(true)
            }
            "bomb" => {
                // At a hook: as many of them as a hook may compile at all (32).
                let r = PatternSet::compile(&bomb_patterns(self.calls)[..32]);
                self.compiled.truncate(1);
                self.compiled.push(outcome(&r));
                Ok(true)
            }
            "hoard" => {
                self.compiled.clear();
                for i in 0..300 {
                    let r = PatternSet::compile(&[format!("hoard{}_{i}", self.calls)]);
                    self.compiled.push(outcome(&r));
                    if let Ok(set) = r {
                        self.sets.push(set);
                    }
                }
                Ok(true)
            }
            "host-loop" => {
                let text = "mail bob@example.com and alice@example.org ".repeat(64);
                let mut n = 0usize;
                loop {
                    n = std::hint::black_box(n + self.sets[0].find(&text).len());
                }
            }
            _ => Ok(true),
        }
    }
}

/// A value as it arrived (an array as `array:<its JSON>`).
fn echoed(v: Value<'_>) -> AttrValue {
    match v {
        Value::Str(s) => s.into(),
        Value::Bool(b) => b.into(),
        Value::Int(i) => i.into(),
        Value::Double(d) => d.into(),
        Value::Array(json) => format!("array:{json}").into(),
    }
}

/// `echo`: every attribute back as it arrived, on its own record.
fn echo(attrs: &Attrs<'_>, out: &mut Edits) {
    for a in attrs.iter() {
        let v = echoed(a.value);
        if a.key.starts_with("r.") {
            let r: AttrValue = match a.value {
                Value::Str(s) | Value::Array(s) => format!("r:{s}").into(),
                Value::Bool(b) => (!b).into(),
                Value::Int(i) => i.wrapping_add(1).into(),
                Value::Double(d) => (d * 2.0).into(),
            };
            out.replace(a.index, r);
        } else if a.key.starts_with("x.") {
            out.remove(a.index);
        }
        out.upsert(a.record, format!("echo.{}", a.key), v);
    }
}

impl Observer for Hostile {
    fn on_request(&mut self, attrs: &Attrs<'_>, out: &mut Edits) -> Result<(), Error> {
        if self.mode == "echo" {
            // Upserts only: the only edits an observing hook may make.
            for a in attrs.iter() {
                out.upsert(a.record, format!("echo.{}", a.key), echoed(a.value));
            }
        }
        self.misbehave(out, attrs.len())?;
        Ok(())
    }

    fn on_dispatch(&mut self, attrs: &Attrs<'_>, out: &mut Edits) -> Result<(), Error> {
        self.misbehave(out, attrs.len())?;
        Ok(())
    }

    fn on_child(&mut self, attrs: &Attrs<'_>, out: &mut Edits) -> Result<(), Error> {
        self.misbehave(out, attrs.len())?;
        Ok(())
    }
}

impl SpanProcessor for Hostile {
    fn on_spans(&mut self, batch: &SpanBatch<'_>, out: &mut SpanEdits) -> Result<(), Error> {
        if self.mode == "echo" {
            echo(batch.attrs(), &mut out.attrs);
            for s in batch.spans() {
                out.attrs.upsert(s.index, "echo.record.name", s.name());
                out.attrs
                    .upsert(s.index, "echo.record.kind", format!("{:?}", s.kind()));
                out.attrs.upsert(s.index, "echo.record.error", s.is_error());
            }
        }
        if self.misbehave(&mut out.attrs, batch.attrs().len())? && self.mode == "tag" {
            for s in batch.spans() {
                out.attrs.upsert(s.index, "hostile.seen", true);
            }
        }
        if matches!(self.mode.as_str(), "bomb" | "hoard") {
            let ok = self.compiled.iter().filter(|c| *c == "ok").count();
            let refused = self.compiled.iter().find(|c| *c != "ok").cloned();
            for s in batch.spans() {
                out.attrs.upsert(s.index, "hostile.compiled.ok", ok as i64);
                out.attrs
                    .upsert(s.index, "hostile.sets.live", self.sets.len() as i64);
                if let Some(r) = &refused {
                    out.attrs
                        .upsert(s.index, "hostile.compiled.refused", r.as_str());
                }
                if let Some(r) = self.compiled.last() {
                    out.attrs
                        .upsert(s.index, "hostile.compiled.last", r.as_str());
                }
            }
        }
        if self.mode == "escape" {
            let now = escape_attempts(self.connect.as_deref());
            for s in batch.spans() {
                for (what, outcome) in &self.at_init {
                    out.attrs.upsert(
                        s.index,
                        format!("hostile.escape.init.{what}"),
                        outcome.as_str(),
                    );
                }
                for (what, outcome) in &now {
                    out.attrs.upsert(
                        s.index,
                        format!("hostile.escape.call.{what}"),
                        outcome.as_str(),
                    );
                }
            }
        }
        Ok(())
    }
}

impl LogProcessor for Hostile {
    fn on_logs(&mut self, batch: &LogBatch<'_>, out: &mut LogEdits) -> Result<(), Error> {
        if self.mode == "echo" {
            echo(batch.attrs(), &mut out.attrs);
            for l in batch.logs() {
                out.attrs.upsert(l.index, "echo.record.body", l.body());
                out.attrs
                    .upsert(l.index, "echo.record.severity", i64::from(l.severity()));
                out.attrs
                    .upsert(l.index, "echo.record.event", l.event_name());
            }
        }
        self.misbehave(&mut out.attrs, batch.attrs().len())?;
        Ok(())
    }
}

impl ErrorTranslator for Hostile {
    fn translate(&mut self, err: &ErrorInfo) -> Result<Option<ClientError>, Error> {
        let mut scratch = Edits::default();
        if !self.misbehave(&mut scratch, 0)? || !scratch.is_empty() {
            // huge-output / bad-index at this hook: an answer the daemon must refuse.
            return Ok(Some(ClientError {
                status: 200,
                code: "Not Snake".into(),
                message: String::new(),
                retryable: false,
                retry_after: Some(u32::MAX),
            }));
        }
        if self.mode == "error-5xx" {
            return Ok(Some(ClientError {
                status: 200,
                code: err.code.clone(),
                message: "invalid on purpose".into(),
                retryable: false,
                retry_after: None,
            }));
        }
        Ok(None)
    }
}

export_plugin!(Hostile);
