//! Retention at start-up, before any session is restored: journals unwritten for longer than
//! `journal_retention_days` go, then the oldest beyond `journal_max_sessions`, then the oldest
//! until the files fit `journal_max_total_bytes` (the newest is always kept). Leftovers of an interrupted
//! compaction go at once; copies of damaged files are kept for the retention period.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{JournalConfig, OpenReport};

/// The journal files to recover, after retention.
pub fn apply(
    dir: &Path,
    cfg: &JournalConfig,
    report: &mut OpenReport,
) -> std::io::Result<Vec<PathBuf>> {
    let now = SystemTime::now();
    let mut journals: Vec<(PathBuf, SystemTime, u64)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().unwrap_or(now);
        let age = now.duration_since(modified).unwrap_or_default();
        match path.extension().and_then(|e| e.to_str()) {
            Some("log" | "sealed") => journals.push((path, modified, meta.len())),
            // A compaction that did not reach its rename: the original is intact.
            Some("compact") => remove(&path),
            Some("damaged" | "unusable") if age > cfg.retention => remove(&path),
            _ => {}
        }
    }
    // Newest first: what is kept is a prefix.
    journals.sort_by_key(|j| std::cmp::Reverse(j.1));
    let mut kept = Vec::with_capacity(journals.len());
    let mut bytes = 0u64;
    let budget = cfg.max_total_bytes;
    for (path, modified, len) in journals {
        let age = now.duration_since(modified).unwrap_or_default();
        let why = if age > cfg.retention {
            Some("older than state.journal_retention_days")
        } else if kept.len() >= cfg.max_sessions {
            Some("beyond state.journal_max_sessions")
        } else if !kept.is_empty() && bytes + len > budget {
            // The newest journal is always kept (a session's own cap bounds it).
            Some("over state.journal_max_total_bytes")
        } else {
            None
        };
        match why {
            Some(why) => {
                tracing::info!(target: "acpd::journal", "journal: {} removed ({why})", path.display());
                remove(&path);
                report.removed_by_retention += 1;
            }
            None => {
                bytes += len;
                kept.push(path);
            }
        }
    }
    Ok(kept)
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(target: "acpd::journal", "journal: cannot remove {}: {e}", path.display());
    }
}
