//! The durable session journal: one append-only file per session under `<state dir>/journal/`,
//! length + CRC32C framed records (`format`), written before an event reaches any subscriber
//! (`writer`), checked and repaired at start-up (`recover`), bounded by caps, retention and
//! compaction (`retention`, and `writer` for the per-session cap). The design and its
//! guarantees: docs/JOURNAL.md.

pub mod format;
pub mod lock;
pub mod recover;
mod retention;
mod writer;

pub use recover::{AgentCommand, Header};
pub use writer::{JournalState, SessionJournal};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::config::{Fsync, StateConfig};
use format::{Kind, MAGIC, encode};

/// The journal's limits and policy, from `[state]`.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub fsync: Fsync,
    pub fsync_interval: Duration,
    pub max_session_bytes: u64,
    pub max_total_bytes: u64,
    pub retention: Duration,
    pub max_sessions: usize,
}

impl JournalConfig {
    pub fn from_state(s: &StateConfig) -> Self {
        Self {
            fsync: s.journal_fsync,
            fsync_interval: Duration::from_millis(s.journal_fsync_interval_ms),
            max_session_bytes: s.journal_max_session_bytes,
            max_total_bytes: s.journal_max_total_bytes,
            retention: Duration::from_secs(s.journal_retention_days * 86_400),
            max_sessions: s.journal_max_sessions,
        }
    }
}

impl Fsync {
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Interval => "interval",
            Fsync::Always => "always",
        }
    }
}

/// Why events were not journaled (the `acpd.journal.reason` of `acpd.journal.dropped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// One event larger than the per-session cap allows.
    SessionCap,
    /// The total cap over every journal was reached.
    TotalCap,
    /// A write failed (a full disk, an I/O error).
    IoError,
    /// Old events removed to keep a session under its cap.
    Compacted,
}

impl Reason {
    const ALL: [Reason; 4] = [
        Reason::SessionCap,
        Reason::TotalCap,
        Reason::IoError,
        Reason::Compacted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SessionCap => "session_cap",
            Reason::TotalCap => "total_cap",
            Reason::IoError => "io_error",
            Reason::Compacted => "compacted",
        }
    }

    pub fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or(Reason::IoError)
    }
}

static DROPS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

pub(crate) fn count_drop(reason: Reason, n: u64) {
    let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
    DROPS[i].fetch_add(n, Ordering::Relaxed);
}

/// Events not journaled (or compacted away) so far, by reason.
pub fn drops() -> impl Iterator<Item = (Reason, u64)> {
    Reason::ALL
        .into_iter()
        .zip(DROPS.iter().map(|c| c.load(Ordering::Relaxed)))
}

/// The journals of one state directory.
pub struct Journal {
    dir: PathBuf,
    pub(crate) cfg: JournalConfig,
    pub(crate) boot_id: String,
    /// Bytes in every journal file (reserved before a write, released on failure or removal).
    total: AtomicU64,
    /// Files open for appends, and which of them were written since the last fdatasync.
    open: Mutex<Open>,
    dir_dirty: AtomicBool,
    me: Weak<Journal>,
}

#[derive(Default)]
struct Open {
    files: HashMap<String, Arc<File>>,
    journals: HashMap<String, Weak<SessionJournal>>,
    dirty: HashSet<String>,
}

/// A session found in the journal at start-up.
pub struct Restored {
    pub journal: Arc<SessionJournal>,
    pub header: Header,
    pub meta: Value,
    /// The epoch its ids belong to now (a new one when recovery found events missing).
    pub epoch: String,
    pub last_id: u64,
}

/// What start-up found, for the log and the benchmark.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    pub sessions: usize,
    pub events: u64,
    pub bytes: u64,
    pub damaged: usize,
    pub unusable: usize,
    pub removed_by_retention: usize,
    pub elapsed: Duration,
}

/// The file a session's journal lives in: a hash, as session ids may be 256 characters long.
pub fn file_name(session_id: &str) -> String {
    let d = Sha256::digest(session_id.as_bytes());
    let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{hex}.log")
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Journal {
    /// Opens (creating it) `<state dir>/journal`, applies retention, and recovers every session
    /// in it. The caller holds the state directory's lock.
    pub fn open(
        state_dir: &Path,
        cfg: JournalConfig,
    ) -> std::io::Result<(Arc<Journal>, Vec<Restored>, OpenReport)> {
        let started = Instant::now();
        let dir = state_dir.join("journal");
        std::fs::create_dir_all(&dir)?;
        let journal = Arc::new_cyclic(|me| Journal {
            dir,
            cfg,
            boot_id: boot_id(),
            total: AtomicU64::new(0),
            open: Mutex::new(Open::default()),
            dir_dirty: AtomicBool::new(false),
            me: me.clone(),
        });
        let mut report = OpenReport::default();
        let files = retention::apply(&journal.dir, &journal.cfg, &mut report)?;
        // What a crashed predecessor wrote on this boot reaches stable storage in one call (not
        // one fdatasync per file); each such journal is then marked synced (a marker lost to a
        // power cut only makes the next start reset that session's epoch: the safe side).
        if let Ok(d) = File::open(&journal.dir) {
            let _ = nix::unistd::syncfs(&d);
        }
        let mut restored = Vec::with_capacity(files.len());
        for path in files {
            if let Some(r) = journal.recover(&path, &mut report) {
                restored.push(r);
            }
        }
        restored.sort_by_key(|r| r.header.created_at_ms);
        report.sessions = restored.len();
        report.bytes = journal.total.load(Ordering::Relaxed);
        journal.sync_dir_now();
        journal.start_sync_thread();
        register_metrics(&journal);
        report.elapsed = started.elapsed();
        Ok((journal, restored, report))
    }

    fn arc(&self) -> Arc<Journal> {
        self.me
            .upgrade()
            .expect("the journal outlives its sessions' use of it")
    }

    /// Checks one file and repairs what it can: a damaged tail is cut (the file copied aside
    /// first), and a session whose journal lost events clients may have seen gets a new epoch.
    fn recover(&self, path: &Path, report: &mut OpenReport) -> Option<Restored> {
        let mut s = match recover::scan(path) {
            Ok(s) => s,
            Err(recover::Unusable(why)) => {
                report.unusable += 1;
                let aside = path.with_extension("unusable");
                tracing::error!(target: "acpd::journal", "journal: {} is unusable ({why}); moved to {}", path.display(), aside.display());
                let _ = std::fs::rename(path, &aside);
                return None;
            }
        };
        let id = s.header.session_id.clone();
        let mut reset: Option<String> = None;
        if let Some(d) = s.damage.clone() {
            report.damaged += 1;
            let aside = path.with_extension("damaged");
            let copied = std::fs::copy(path, &aside).is_ok();
            tracing::error!(
                target: "acpd::journal",
                { "session.id" = %id },
                "journal: session {id}: {} at offset {} of {}; {} bytes after it discarded{}; the session keeps its {} earlier events under a new event epoch",
                d.reason,
                d.offset,
                path.display(),
                d.discarded,
                if copied { format!(" (the file as found is kept as {})", aside.display()) } else { String::new() },
                s.events,
            );
            if let Err(e) = OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(s.good_len))
            {
                tracing::error!(target: "acpd::journal", { "session.id" = %id }, "journal: cannot cut {}: {e}; the session is skipped", path.display());
                return None;
            }
            reset = Some(format!(
                "damaged on disk: {} at offset {}",
                d.reason, d.offset
            ));
        }
        let renamed_sealed = path.extension().is_some_and(|e| e == "sealed");
        if s.sealed.is_some() || renamed_sealed {
            reset
                .get_or_insert_with(|| "events were not journaled (a cap or a write error)".into());
        }
        let power_loss = !s.synced && s.last_boot != self.boot_id && s.last_fsync != "always";
        if power_loss {
            tracing::warn!(target: "acpd::journal", { "session.id" = %id }, "journal: session {id} was written before the machine restarted and not synced since: events written in its last fsync interval may be lost, so it gets a new event epoch");
            reset.get_or_insert_with(|| {
                "the machine restarted before the journal was synced".into()
            });
        }
        let mut tail = Vec::new();
        if let Some(reason) = &reset {
            let epoch = uuid::Uuid::new_v4().to_string();
            tail.extend(encode(
                Kind::EpochReset,
                json!({"epoch": epoch, "lastId": s.last_id, "reason": reason})
                    .to_string()
                    .as_bytes(),
            ));
            s.epoch = epoch;
            s.sealed = None;
            s.lost = Some(format!(
                "the journal lost events ({reason}); the event epoch changed"
            ));
        }
        if reset.is_some() || !s.synced {
            tail.extend(encode(
                Kind::Synced,
                json!({"bootId": self.boot_id}).to_string().as_bytes(),
            ));
            let must_sync = reset.is_some();
            let written = OpenOptions::new()
                .append(true)
                .open(path)
                .and_then(|mut f| {
                    f.write_all(&tail)?;
                    if must_sync {
                        f.sync_data()?;
                    }
                    Ok(())
                });
            match written {
                Ok(()) => s.good_len += tail.len() as u64,
                Err(e) => {
                    tracing::error!(target: "acpd::journal", { "session.id" = %id }, "journal: cannot update {} at start-up: {e}; the session is skipped", path.display());
                    return None;
                }
            }
        }
        if renamed_sealed {
            let back = path.with_extension("log");
            if std::fs::rename(path, &back).is_ok() {
                s.path = back;
            }
        }
        report.events += s.events;
        self.total.fetch_add(s.good_len, Ordering::Relaxed);
        let header = s.header.clone();
        let meta = s.meta.clone();
        let epoch = s.epoch.clone();
        let last_id = s.last_id;
        let journal = SessionJournal::from_scan(self.arc(), s);
        self.open_lock()
            .journals
            .insert(id, Arc::downgrade(&journal));
        Some(Restored {
            journal,
            header,
            meta,
            epoch,
            last_id,
        })
    }

    /// A new journal for a session (created, or loaded from the agent): identity and metadata
    /// first. A journal that cannot be written is returned sealed (logged, counted).
    pub fn create(&self, header: Header, meta: Value) -> Arc<SessionJournal> {
        let path = self.dir.join(file_name(&header.session_id));
        let mut head = MAGIC.to_vec();
        head.extend(encode(
            Kind::Header,
            &serde_json::to_vec(&header).unwrap_or_default(),
        ));
        if !meta.is_null() {
            head.extend(encode(Kind::Meta, meta.to_string().as_bytes()));
        }
        let id = header.session_id.clone();
        let mut sealed = None;
        let mut file = None;
        if self.reserve(head.len() as u64).is_err() {
            tracing::error!(target: "acpd::journal", { "session.id" = %id }, "journal: session {id} is not journaled: the journal's total size cap is reached (total_cap)");
            sealed = Some(Reason::TotalCap);
        } else {
            let written = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .and_then(|mut f| {
                    f.write_all(&head)?;
                    if self.cfg.fsync == Fsync::Always {
                        f.sync_data()?;
                    }
                    Ok(f)
                });
            match written {
                Ok(f) => file = Some(Arc::new(f)),
                Err(e) => {
                    self.release(head.len() as u64);
                    tracing::error!(target: "acpd::journal", { "session.id" = %id }, "journal: session {id} is not journaled: cannot create {}: {e} (io_error)", path.display());
                    sealed = Some(Reason::IoError);
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let len = if file.is_some() { head.len() as u64 } else { 0 };
        let journal = SessionJournal::new(
            self.arc(),
            id.clone(),
            writer::Inner {
                path,
                file: file.clone(),
                opened: true,
                len,
                first_id: 1,
                last_id: 0,
                events: 0,
                index: Vec::new(),
                since_index: 0,
                header,
                meta,
                sealed,
                lost: None,
                removed: false,
            },
        );
        {
            let mut open = self.open_lock();
            open.journals.insert(id.clone(), Arc::downgrade(&journal));
            if let Some(f) = file {
                open.files.insert(id.clone(), f);
                open.dirty.insert(id);
            }
        }
        self.sync_dir();
        journal
    }

    fn open_lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `n` bytes of the total cap, or says it is reached.
    pub(crate) fn reserve(&self, n: u64) -> Result<(), Reason> {
        let cap = self.cfg.max_total_bytes;
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t + n <= cap).then_some(t + n)
            })
            .map(|_| ())
            .map_err(|_| Reason::TotalCap)
    }

    /// Bookkeeping records (`Opened`, `Sealed`, `Synced`) are written whatever the cap says.
    pub(crate) fn reserve_unchecked(&self, n: u64) {
        self.total.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn release(&self, n: u64) {
        let _ = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(n))
            });
    }

    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub(crate) fn register(&self, session: &str, file: Arc<File>) {
        self.open_lock().files.insert(session.to_string(), file);
    }

    pub(crate) fn unregister(&self, session: &str) {
        let mut open = self.open_lock();
        open.files.remove(session);
        open.dirty.remove(session);
        open.journals.remove(session);
    }

    pub(crate) fn mark_dirty(&self, session: &str) {
        let mut open = self.open_lock();
        if !open.dirty.contains(session) {
            open.dirty.insert(session.to_string());
        }
    }

    /// The directory's entries (a new or renamed file) reach stable storage with the next sync.
    pub(crate) fn sync_dir(&self) {
        match self.cfg.fsync {
            Fsync::Always => self.sync_dir_now(),
            Fsync::Interval => self.dir_dirty.store(true, Ordering::Release),
        }
    }

    fn sync_dir_now(&self) {
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
    }

    /// Under `fsync = "interval"`, a thread fdatasyncs every file written since its last pass.
    fn start_sync_thread(&self) {
        if self.cfg.fsync != Fsync::Interval {
            return;
        }
        let me = self.me.clone();
        let every = self.cfg.fsync_interval;
        let _ = std::thread::Builder::new()
            .name("acpd-journal-sync".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(j) = me.upgrade() else { return };
                    j.sync_pass();
                }
            });
    }

    /// fdatasyncs the files written since the last pass (outside every lock but the set's).
    pub fn sync_pass(&self) {
        let files: Vec<(String, Arc<File>)> = {
            let mut open = self.open_lock();
            let dirty = std::mem::take(&mut open.dirty);
            dirty
                .into_iter()
                .filter_map(|s| open.files.get(&s).map(|f| (s, f.clone())))
                .collect()
        };
        for (session, f) in files {
            if let Err(e) = f.sync_data() {
                tracing::error!(target: "acpd::journal", { "session.id" = %session }, "journal: fdatasync failed: {e}");
            }
        }
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            self.sync_dir_now();
        }
    }

    /// A closed session's journal is removed.
    pub fn remove(&self, journal: &SessionJournal) {
        journal.remove();
    }

    /// Clean shutdown: every journal this run wrote is synced and says so.
    pub fn finish(&self) {
        let journals: Vec<Arc<SessionJournal>> = self
            .open_lock()
            .journals
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for j in journals {
            j.finish();
        }
        self.sync_pass();
        self.sync_dir_now();
    }
}

fn register_metrics(journal: &Arc<Journal>) {
    use crate::telemetry::semconv;
    use opentelemetry::KeyValue;
    let meter = opentelemetry::global::meter("acpd");
    let _ = meter
        .u64_observable_counter(semconv::M_JOURNAL_DROPPED)
        .with_unit("{event}")
        .with_description("Events not journaled (caps, write errors) or compacted away, by reason")
        .with_callback(|o| {
            for (reason, n) in drops() {
                o.observe(
                    n,
                    &[KeyValue::new(semconv::JOURNAL_REASON, reason.as_str())],
                );
            }
        })
        .build();
    let weak = Arc::downgrade(journal);
    let _ = meter
        .u64_observable_gauge(semconv::M_JOURNAL_BYTES)
        .with_unit("By")
        .with_description("Bytes in the session journal's files")
        .with_callback(move |o| {
            if let Some(j) = weak.upgrade() {
                o.observe(j.total_bytes(), &[]);
            }
        })
        .build();
}

/// A journal in a fresh temporary directory, for the tests here and the event bus's.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A fresh directory, removed when the guard drops: also when a test fails.
    pub fn dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("acpd-journal-")
            .tempdir()
            .expect("a temporary directory")
    }

    pub fn cfg(max_session: u64, max_total: u64) -> JournalConfig {
        JournalConfig {
            fsync: Fsync::Interval,
            fsync_interval: Duration::from_millis(50),
            max_session_bytes: max_session,
            max_total_bytes: max_total,
            retention: Duration::from_secs(86_400),
            max_sessions: 100,
        }
    }

    pub fn header(id: &str, j: &Journal) -> Header {
        Header {
            v: 1,
            session_id: id.into(),
            agent_session_id: id.into(),
            workspace_id: "w".into(),
            workspace_cwd: "/w".into(),
            created_at_ms: 5,
            epoch: "e1".into(),
            agent: AgentCommand {
                program: "p".into(),
                args: vec!["a".into()],
            },
            boot_id: j.boot_id.clone(),
            fsync: "interval".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{cfg, dir, header};
    use super::*;
    use bytes::Bytes;

    fn frame(id: u64) -> Vec<u8> {
        format!(
            "id: {id}\nevent: x\ndata: {{\"id\":{id},\"pad\":\"{}\"}}\n\n",
            "p".repeat(100)
        )
        .into_bytes()
    }

    #[test]
    fn written_events_come_back_after_a_crash() {
        let d = dir();
        let (j, restored, _) = Journal::open(d.path(), cfg(1 << 20, 1 << 30)).unwrap();
        assert!(restored.is_empty());
        let s = j.create(header("s1", &j), json!({"displayName": "one"}));
        for id in 1..=300 {
            s.append_event(id, &frame(id));
        }
        s.set_meta(json!({"displayName": "two"}));
        let got = s.read_frames(100..=102);
        assert_eq!(
            got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [100, 101, 102]
        );
        assert_eq!(&got[0].1[..], &frame(100)[..]);
        // No shutdown: as after SIGKILL, the same boot.
        drop((s, j));
        let (j, restored, report) = Journal::open(d.path(), cfg(1 << 20, 1 << 30)).unwrap();
        assert_eq!(
            (report.sessions, report.events, report.damaged),
            (1, 300, 0)
        );
        let r = &restored[0];
        assert_eq!(
            (r.epoch.as_str(), r.last_id),
            ("e1", 300),
            "same boot: the epoch stays"
        );
        assert_eq!(r.meta, json!({"displayName": "two"}));
        assert_eq!(r.header.agent.args, ["a"]);
        assert_eq!(r.journal.read_frames(1..=300).len(), 300);
        // Appends continue after a restart.
        r.journal.append_event(301, &frame(301));
        assert_eq!(r.journal.read_frames(299..=400).len(), 3);
        assert!(j.total_bytes() > 300 * 100);
    }

    #[test]
    fn retention_keeps_the_most_recently_written() {
        let d = dir();
        let (j, _, _) = Journal::open(d.path(), cfg(1 << 20, 1 << 30)).unwrap();
        for k in 0..5 {
            let s = j.create(header(&format!("s{k}"), &j), Value::Null);
            s.append_event(1, &frame(1));
        }
        j.finish();
        drop(j);
        // Distinct modification times, oldest first.
        for k in 0..5 {
            let f = File::options()
                .write(true)
                .open(d.path().join("journal").join(file_name(&format!("s{k}"))))
                .unwrap();
            let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000 + k);
            f.set_modified(at).unwrap();
        }
        let mut c = cfg(1 << 20, 1 << 30);
        c.max_sessions = 3;
        c.retention = Duration::from_secs(u64::MAX / 4);
        let (_j, restored, report) = Journal::open(d.path(), c).unwrap();
        assert_eq!(report.removed_by_retention, 2);
        let mut ids: Vec<_> = restored
            .iter()
            .map(|r| r.header.session_id.clone())
            .collect();
        ids.sort();
        assert_eq!(ids, ["s2", "s3", "s4"]);
    }

    #[test]
    fn damage_resets_the_epoch_and_keeps_the_rest() {
        let d = dir();
        let (j, _, _) = Journal::open(d.path(), cfg(1 << 20, 1 << 30)).unwrap();
        let ok = j.create(header("ok", &j), Value::Null);
        let bad = j.create(header("bad", &j), Value::Null);
        for id in 1..=20 {
            ok.append_event(id, &frame(id));
            bad.append_event(id, &frame(id));
        }
        j.finish();
        drop((ok, bad, j));
        let path = d.path().join("journal").join(file_name("bad"));
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_j, restored, report) = Journal::open(d.path(), cfg(1 << 20, 1 << 30)).unwrap();
        assert_eq!(report.damaged, 1);
        let bad = restored
            .iter()
            .find(|r| r.header.session_id == "bad")
            .unwrap();
        let ok = restored
            .iter()
            .find(|r| r.header.session_id == "ok")
            .unwrap();
        assert_ne!(bad.epoch, "e1");
        assert!(bad.last_id < 20 && bad.last_id > 0);
        assert!(bad.journal.state().lost.unwrap().contains("checksum"));
        assert!(
            d.path()
                .join("journal")
                .join(file_name("bad"))
                .with_extension("damaged")
                .exists()
        );
        assert_eq!((ok.epoch.as_str(), ok.last_id), ("e1", 20));
        assert!(ok.journal.state().lost.is_none());
    }

    #[test]
    fn the_session_cap_compacts_and_the_total_cap_seals() {
        let d = dir();
        let (j, _, _) = Journal::open(d.path(), cfg(64 * 1024, 1 << 30)).unwrap();
        let s = j.create(header("s", &j), Value::Null);
        for id in 1..=2000 {
            s.append_event(id, &frame(id));
        }
        let st = s.state();
        assert!(st.bytes <= 64 * 1024, "{}", st.bytes);
        assert!(st.first_id > 1 && st.last_id == 2000);
        let got = s.read_frames(st.first_id..=2000);
        assert_eq!(
            got.len() as u64,
            2001 - st.first_id,
            "contiguous after compaction"
        );
        assert!(st.lost.unwrap().contains("compacted"));
        drop((s, j));
        let size = std::fs::metadata(d.path().join("journal").join(file_name("s")))
            .unwrap()
            .len();
        let (j, restored, _) = Journal::open(d.path(), cfg(1 << 20, size * 10 / 9 + 1000)).unwrap();
        let r = &restored[0];
        assert_eq!(r.last_id, 2000);
        // The total cap is reached within a few events: later ones are dropped.
        for id in 2001..=2100 {
            r.journal.append_event(id, &frame(id));
        }
        assert_eq!(r.journal.state().sealed, Some(Reason::TotalCap));
        let last = r.journal.state().last_id;
        assert!(last < 2100);
        drop(restored);
        drop(j);
        let (_j, restored, _) = Journal::open(d.path(), cfg(64 * 1024, 1 << 30)).unwrap();
        assert_ne!(restored[0].epoch, "e1", "a sealed journal gets a new epoch");
        assert_eq!(restored[0].last_id, last);
    }

    #[test]
    fn batched_appends_read_back_as_single_ones_do() {
        let d = dir();
        let (j, _, _) = Journal::open(d.path(), cfg(1 << 20, 1 << 30)).unwrap();
        let one = j.create(header("one", &j), Value::Null);
        let batched = j.create(header("batched", &j), Value::Null);
        // The first batch is also this run's first write (the `Opened` record goes before it);
        // batches of 1 to 7 cross the index's stride many times.
        let mut id = 1;
        for n in (1..=7).cycle().take(120) {
            let events: Vec<(u64, Bytes)> = (id..id + n).map(|k| (k, frame(k).into())).collect();
            assert_eq!(batched.append_events(&events), n as usize);
            for (k, f) in &events {
                assert!(one.append_event(*k, f));
            }
            id += n;
        }
        let last = id - 1;
        let (a, b) = (one.state(), batched.state());
        assert_eq!((b.first_id, b.last_id), (a.first_id, a.last_id));
        // The same records: only the headers differ, by the sessions' ids (twice each).
        assert_eq!(
            b.bytes - a.bytes,
            2 * ("batched".len() - "one".len()) as u64
        );
        for range in [1..=last, 1..=3, 250..=260, last - 5..=last] {
            assert_eq!(batched.read_frames(range.clone()), one.read_frames(range));
        }
        assert_eq!(&batched.read_frames(77..=77)[0].1[..], &frame(77)[..]);
        drop((one, batched, j));
        let (_j, restored, report) = Journal::open(d.path(), cfg(1 << 20, 1 << 30)).unwrap();
        assert_eq!((report.events, report.damaged), (2 * last, 0));
        let r = restored
            .iter()
            .find(|r| r.header.session_id == "batched")
            .unwrap();
        assert_eq!(r.journal.read_frames(1..=last).len() as u64, last);
    }

    #[test]
    fn a_batch_past_a_cap_goes_event_by_event() {
        let d = dir();
        let (j, _, _) = Journal::open(d.path(), cfg(64 * 1024, 1 << 30)).unwrap();
        let s = j.create(header("s", &j), Value::Null);
        // Batches of five past the session cap: compaction makes room as for single appends.
        for first in (1..=2000).step_by(5) {
            let events: Vec<(u64, Bytes)> =
                (first..first + 5).map(|k| (k, frame(k).into())).collect();
            assert_eq!(s.append_events(&events), 5);
        }
        let st = s.state();
        assert!(st.bytes <= 64 * 1024, "{}", st.bytes);
        assert!(st.first_id > 1 && st.last_id == 2000);
        assert_eq!(
            s.read_frames(st.first_id..=2000).len() as u64,
            2001 - st.first_id
        );
        drop((s, j));
        // The total cap: the batch that reaches it is journaled up to it, the rest dropped.
        let size = std::fs::metadata(d.path().join("journal").join(file_name("s")))
            .unwrap()
            .len();
        let (_j, restored, _) = Journal::open(d.path(), cfg(1 << 20, size + 300)).unwrap();
        let r = &restored[0].journal;
        let events: Vec<(u64, Bytes)> = (2001..=2005).map(|k| (k, frame(k).into())).collect();
        let journaled = r.append_events(&events);
        assert!((1..5).contains(&journaled), "{journaled}");
        assert_eq!(r.state().sealed, Some(Reason::TotalCap));
        assert_eq!(r.state().last_id, 2000 + journaled as u64);
    }
}
