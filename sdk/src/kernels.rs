//! Host kernels: regexes and keyed hashing run natively in the daemon. Off wasm32 (plugin
//! unit tests) the same functions run on local stand-ins.

/// A match of a pattern set: `pattern` indexes the compiled list; byte offsets into the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub pattern: u32,
    pub start: u32,
    pub end: u32,
}

/// A match of a batch scan: `range` indexes the ranges given to [`PatternSet::scan`]; offsets
/// are relative to that range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeMatch {
    pub range: u32,
    pub pattern: u32,
    pub start: u32,
    pub end: u32,
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{Match, RangeMatch};
    use crate::bindings::acpd::plugin::host;

    pub struct PatternSet(host::PatternSet);

    impl PatternSet {
        pub fn compile(patterns: &[String]) -> Result<Self, String> {
            host::PatternSet::compile(patterns).map(PatternSet)
        }

        pub fn find(&self, text: &str) -> Vec<Match> {
            self.0
                .find(text)
                .into_iter()
                .map(|m| Match {
                    pattern: m.pattern,
                    start: m.start,
                    end: m.end,
                })
                .collect()
        }

        pub fn scan(&self, arena: &str, ranges: &[(u32, u32)]) -> Vec<RangeMatch> {
            self.0
                .scan(arena, ranges)
                .into_iter()
                .map(|m| RangeMatch {
                    range: m.range,
                    pattern: m.pattern,
                    start: m.start,
                    end: m.end,
                })
                .collect()
        }
    }

    pub fn keyed_hash(key_id: &str, data: &str, hex_len: u32) -> Result<String, String> {
        host::keyed_hash(key_id, data, hex_len)
    }

    pub fn count(name: &str, delta: u64) {
        host::count(name, delta)
    }

    pub fn log(level: log::Level, msg: &str) {
        let level = match level {
            log::Level::Trace => host::Level::Trace,
            log::Level::Debug => host::Level::Debug,
            log::Level::Info => host::Level::Info,
            log::Level::Warn => host::Level::Warn,
            log::Level::Error => host::Level::Error,
        };
        host::log(level, msg)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{Match, RangeMatch};
    use hmac::{Hmac, Mac};

    /// The same semantics as the daemon's kernel (leftmost-first, no overlaps, an earlier
    /// pattern wins a tie), on the same `regex` crate.
    pub struct PatternSet {
        set: regex::RegexSet,
        regexes: Vec<regex::Regex>,
    }

    impl PatternSet {
        pub fn compile(patterns: &[String]) -> Result<Self, String> {
            let regexes = patterns
                .iter()
                .enumerate()
                .map(|(i, p)| regex::Regex::new(p).map_err(|e| format!("pattern {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let set = regex::RegexSet::new(patterns).map_err(|e| e.to_string())?;
            Ok(Self { set, regexes })
        }

        pub fn find(&self, text: &str) -> Vec<Match> {
            let hits = self.set.matches(text);
            let mut out: Vec<Match> = Vec::new();
            for p in hits.iter() {
                for m in self.regexes[p].find_iter(text) {
                    out.push(Match {
                        pattern: p as u32,
                        start: m.start() as u32,
                        end: m.end() as u32,
                    });
                }
            }
            out.sort_by_key(|m| (m.start, std::cmp::Reverse(m.end), m.pattern));
            let mut end = 0;
            let mut kept = Vec::with_capacity(out.len());
            for (i, m) in out.into_iter().enumerate() {
                if i == 0 || m.start >= end {
                    end = m.end;
                    kept.push(m);
                }
            }
            kept
        }

        pub fn scan(&self, arena: &str, ranges: &[(u32, u32)]) -> Vec<RangeMatch> {
            let mut out = Vec::new();
            for (i, &(o, l)) in ranges.iter().enumerate() {
                let Some(text) = arena.get(o as usize..(o + l) as usize) else {
                    continue;
                };
                out.extend(self.find(text).into_iter().map(|m| RangeMatch {
                    range: i as u32,
                    pattern: m.pattern,
                    start: m.start,
                    end: m.end,
                }));
            }
            out
        }
    }

    /// Key bytes: `ACPD_SDK_TEST_KEY_<ID>` from the environment, else the id itself.
    pub fn keyed_hash(key_id: &str, data: &str, hex_len: u32) -> Result<String, String> {
        let var = format!(
            "ACPD_SDK_TEST_KEY_{}",
            key_id.to_uppercase().replace('-', "_")
        );
        let key = std::env::var(var).unwrap_or_else(|_| key_id.to_string());
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_bytes())
            .map_err(|e| e.to_string())?;
        mac.update(data.as_bytes());
        let mut hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if hex_len > 0 && (hex_len as usize) < hex.len() {
            hex.truncate(hex_len as usize);
        }
        Ok(hex)
    }

    pub fn count(_name: &str, _delta: u64) {}

    pub fn log(level: log::Level, msg: &str) {
        eprintln!("[{level}] {msg}");
    }
}

/// Regexes (Rust `regex` syntax) compiled once by the daemon and run natively: ~2x faster than
/// a regex engine inside the guest, and no per-instance compile cost.
pub struct PatternSet(imp::PatternSet);

impl PatternSet {
    pub fn compile<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        let owned: Vec<String> = patterns.iter().map(|p| p.as_ref().to_string()).collect();
        imp::PatternSet::compile(&owned).map(PatternSet)
    }

    /// Leftmost-first, non-overlapping matches of any pattern in `text`.
    pub fn find(&self, text: &str) -> Vec<Match> {
        self.0.find(text)
    }

    /// [`PatternSet::find`] over many `(offset, len)` slices of `arena` in one host call: use
    /// it once per batch.
    pub fn scan(&self, arena: &str, ranges: &[(u32, u32)]) -> Vec<RangeMatch> {
        if ranges.is_empty() {
            return Vec::new();
        }
        self.0.scan(arena, ranges)
    }
}

/// HMAC-SHA256 of `data` under the operator's key `key_id` (`[keys]` in acpd.toml), as hex
/// truncated to `hex_len` characters (0 = all). The key never enters the plugin.
pub fn keyed_hash(key_id: &str, data: &str, hex_len: u32) -> Result<String, String> {
    imp::keyed_hash(key_id, data, hex_len)
}

/// Adds `delta` to this plugin's counter `name` (metric `acpd.plugin.custom`).
pub fn count(name: &str, delta: u64) {
    imp::count(name, delta)
}

pub(crate) fn host_log(level: log::Level, msg: &str) {
    imp::log(level, msg)
}
