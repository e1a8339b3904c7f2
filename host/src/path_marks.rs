//! Where the daemon's time goes between a prompt's POST and its request in the agent's pipe
//! (`--features path-marks`, a build of its own for `tests/scripts/path-marks.sh`). Each step
//! of an admission stamps the time on its thread; once the request is written, the stamps
//! (µs after the request reached the HTTP stack) go as one line to `$ACPD_PATH_MARKS/<pid>`:
//! every step by name, in order, `-` for one not stamped. With `alloc-count` as well (the
//! script builds both), each stamp also carries the thread's allocations since the request
//! reached the stack (`<µs>@<allocations>`): on a path whose cost is its first touches of cold
//! memory, every allocation touches the allocator's. Lines are written 64 at a time, so a
//! daemon's last few turns are not in its file. Without the feature [`mark`] is empty and
//! compiles to nothing.
//!
//! The stamps are per thread: an admission runs in one task, and one that moved to another
//! worker half way (its body arriving late) leaves no line.

/// The steps, in the order an admission that starts its turn passes them.
#[derive(Clone, Copy)]
#[repr(usize)]
pub enum Step {
    /// The outermost step (`http::span::trace`, first in `http::pipeline`) has the request.
    Received,
    /// Its server span is started.
    Span,
    /// Host, CORS, auth and admission checks passed (the `request` hook's layer entered).
    Guarded,
    /// The `request` hook's plugins returned (absent when no plugin runs there).
    Enriched,
    /// Routed, path, headers and JSON body extracted: the handler runs.
    Handler,
    /// The prompt's blocks converted.
    Blocks,
    /// Session locked, the turn's trace admitted.
    Admitted,
    /// The turn's running state and events prepared.
    Prepared,
    /// The ACP client span started and its context injected.
    TurnSpan,
    /// The request serialised and written to the agent's pipe.
    Written,
}

#[cfg(feature = "path-marks")]
mod imp {
    use super::Step;
    use std::cell::RefCell;
    use std::fmt::Write as _;
    use std::io::Write as _;
    use std::sync::Mutex;
    use std::time::Instant;

    /// The steps' names, in `Step`'s order.
    const NAMES: [&str; 10] = [
        "received",
        "span",
        "guarded",
        "enriched",
        "handler",
        "blocks",
        "admitted",
        "prepared",
        "turn_span",
        "written",
    ];

    thread_local! {
        /// Each step's time and this thread's allocations so far (when counted).
        static STAMPS: RefCell<[Option<(Instant, Option<u64>)>; NAMES.len()]> =
            const { RefCell::new([None; NAMES.len()]) };
    }

    /// Lines not yet written: one write per 64 turns, not one per turn next to the path.
    static OUT: Mutex<(String, usize)> = Mutex::new((String::new(), 0));

    pub fn mark(step: Step) {
        let now = (Instant::now(), crate::alloc_count::this_thread());
        STAMPS.with(|s| {
            let mut s = s.borrow_mut();
            if matches!(step, Step::Received) {
                *s = [None; NAMES.len()];
            }
            s[step as usize] = Some(now);
            if matches!(step, Step::Written)
                && let Some((t0, a0)) = s[0]
            {
                let mut line = String::new();
                for (name, t) in NAMES.iter().zip(s.iter()) {
                    let _ = match t {
                        Some((t, a)) => {
                            let us = (*t - t0).as_nanos() as f64 / 1e3;
                            match a.zip(a0) {
                                Some((a, a0)) => write!(line, "{name}={us:.1}@{} ", a - a0),
                                None => write!(line, "{name}={us:.1} "),
                            }
                        }
                        None => write!(line, "{name}=- "),
                    };
                }
                *s = [None; NAMES.len()];
                let mut out = OUT.lock().unwrap_or_else(|p| p.into_inner());
                out.0.push_str(line.trim_end());
                out.0.push('\n');
                out.1 += 1;
                if out.1 >= 64 {
                    flush(&mut out.0);
                    out.1 = 0;
                }
            }
        });
    }

    fn flush(buf: &mut String) {
        if let Some(dir) = std::env::var_os("ACPD_PATH_MARKS") {
            let path = std::path::Path::new(&dir).join(std::process::id().to_string());
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = f.write_all(buf.as_bytes());
            }
        }
        buf.clear();
    }
}

/// Stamps `step` for the admission running on this thread (nothing without the feature).
#[inline(always)]
pub fn mark(step: Step) {
    #[cfg(feature = "path-marks")]
    imp::mark(step);
    #[cfg(not(feature = "path-marks"))]
    let _ = step;
}
