//! One session's journal file: appends (under the session's event-bus lock, before the event is
//! queued for any subscriber), compaction at the per-session cap, sealing on a drop, and reads.

use bytes::Bytes;
use serde_json::{Value, json};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::format::{
    Decoded, Kind, MAGIC, PREFIX, decode, encode, encode_event, encode_event_into, event_len,
    event_parts,
};
use super::recover::{Header, INDEX_EVERY, Scanned};
use super::{Fsync, Journal, Reason};

pub struct SessionJournal {
    pub(super) store: Arc<Journal>,
    pub session_id: String,
    pub(super) inner: Mutex<Inner>,
}

pub(super) struct Inner {
    pub path: PathBuf,
    /// Opened for appends on the first write of this run (a dormant session holds no fd).
    pub file: Option<Arc<File>>,
    /// This run's `Opened` record is written.
    pub opened: bool,
    /// The end of the last record written.
    pub len: u64,
    pub first_id: u64,
    pub last_id: u64,
    pub events: u64,
    pub index: Vec<(u64, u64)>,
    pub since_index: u64,
    pub header: Header,
    pub meta: Value,
    /// Why appends stopped (events are dropped and counted until a restart resets the epoch).
    pub sealed: Option<Reason>,
    /// What older history is missing, if anything (transcript `partial`).
    pub lost: Option<String>,
    /// The session was closed and its file removed.
    pub removed: bool,
}

/// The journal's view of a session, for status and listings.
pub struct JournalState {
    pub bytes: u64,
    pub first_id: u64,
    pub last_id: u64,
    pub sealed: Option<Reason>,
    pub lost: Option<String>,
}

impl SessionJournal {
    pub(super) fn new(store: Arc<Journal>, session_id: String, inner: Inner) -> Arc<Self> {
        Arc::new(Self {
            store,
            session_id,
            inner: Mutex::new(inner),
        })
    }

    pub(super) fn from_scan(store: Arc<Journal>, s: Scanned) -> Arc<Self> {
        let since_index = s.events % INDEX_EVERY;
        let sealed = s
            .sealed
            .as_ref()
            .map(|v| Reason::parse(v["reason"].as_str().unwrap_or_default()));
        Self::new(
            store,
            s.header.session_id.clone(),
            Inner {
                path: s.path,
                file: None,
                opened: false,
                len: s.good_len,
                first_id: s.first_id,
                last_id: s.last_id,
                events: s.events,
                index: s.index,
                since_index: if since_index == 0 && s.events > 0 {
                    INDEX_EVERY
                } else {
                    since_index
                },
                header: s.header,
                meta: s.meta,
                sealed,
                lost: s.lost,
                removed: false,
            },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn header(&self) -> Header {
        self.lock().header.clone()
    }

    pub fn meta(&self) -> Value {
        self.lock().meta.clone()
    }

    pub fn state(&self) -> JournalState {
        let i = self.lock();
        JournalState {
            bytes: i.len,
            first_id: i.first_id,
            last_id: i.last_id,
            sealed: i.sealed,
            lost: i.lost.clone(),
        }
    }

    /// Journals one event; called with the bus lock held, before the frame reaches any
    /// subscriber. A failure is logged, counted and seals the journal: the event still goes to
    /// the live subscribers, it is only missing from the journal. True when the event is in the
    /// journal (the bus then need not keep it in memory for replay).
    pub fn append_event(&self, id: u64, frame: &[u8]) -> bool {
        let mut i = self.lock();
        if i.removed {
            return false;
        }
        if let Some(reason) = i.sealed {
            super::count_drop(reason, 1);
            return false;
        }
        let rec = encode_event(id, frame);
        let cap = self.store.cfg.max_session_bytes;
        if i.len + rec.len() as u64 > cap {
            self.compact(&mut i, rec.len() as u64);
            if i.len + rec.len() as u64 > cap {
                self.seal(
                    &mut i,
                    id,
                    Reason::SessionCap,
                    "the per-session cap is reached and nothing older can be compacted away",
                );
                return false;
            }
        }
        if let Err(reason) = self.store.reserve(rec.len() as u64) {
            self.seal(
                &mut i,
                id,
                reason,
                "the journal's total size cap is reached",
            );
            return false;
        }
        match self.write(&mut i, &rec) {
            Ok(()) => {
                let at = i.len - rec.len() as u64;
                Self::appended(&mut i, id, at);
                true
            }
            Err(e) => {
                self.store.release(rec.len() as u64);
                let why = format!("write failed: {e}");
                self.seal(&mut i, id, Reason::IoError, &why);
                false
            }
        }
    }

    /// Journals consecutive events as [`append_event`](Self::append_event) would one by one,
    /// with one `write(2)` when they fit (an admitted prompt's events come three at once, and a
    /// write is a system call each). Returns how many of the first events are journaled.
    pub fn append_events(&self, events: &[(u64, Bytes)]) -> usize {
        if let [(id, frame)] = events {
            return usize::from(self.append_event(*id, frame));
        }
        let total: u64 = events.iter().map(|(_, f)| event_len(f) as u64).sum();
        let mut i = self.lock();
        let cap = self.store.cfg.max_session_bytes;
        // Anything but the plain case (removed, sealed, a cap reached: compaction, sealing and
        // the drop counts) is append_event's, one event at a time.
        let plain = !i.removed
            && i.sealed.is_none()
            && i.len + total <= cap
            && self.store.reserve(total).is_ok();
        if !plain {
            drop(i);
            let mut journaled = 0;
            for (n, (id, frame)) in events.iter().enumerate() {
                if self.append_event(*id, frame) && journaled == n {
                    journaled += 1;
                }
            }
            return journaled;
        }
        let mut records = Vec::with_capacity(total as usize);
        for (id, frame) in events {
            encode_event_into(&mut records, *id, frame);
        }
        if let Err(e) = self.write(&mut i, &records) {
            self.store.release(total);
            let why = format!("write failed: {e}");
            // The seal counts the first event; the rest are dropped as a sealed journal's are.
            self.seal(&mut i, events[0].0, Reason::IoError, &why);
            super::count_drop(Reason::IoError, events.len() as u64 - 1);
            return 0;
        }
        // `write` may have put this run's `Opened` record first: the events end at `i.len`.
        let mut at = i.len - total;
        for (id, frame) in events {
            Self::appended(&mut i, *id, at);
            at += event_len(frame) as u64;
        }
        events.len()
    }

    /// The bookkeeping of an event written at offset `at`.
    fn appended(i: &mut Inner, id: u64, at: u64) {
        if i.events == 0 {
            i.first_id = id;
        }
        if i.since_index >= INDEX_EVERY || i.index.is_empty() {
            i.index.push((id, at));
            i.since_index = 0;
        }
        i.since_index += 1;
        i.events += 1;
        i.last_id = id;
    }

    /// Journals the session's metadata when it changed (whole; the last record wins).
    pub fn set_meta(&self, meta: Value) {
        let mut i = self.lock();
        if i.removed || i.meta == meta {
            return;
        }
        i.meta = meta;
        if i.sealed.is_some() {
            return;
        }
        let rec = encode(Kind::Meta, i.meta.to_string().as_bytes());
        if self.store.reserve(rec.len() as u64).is_err() {
            return;
        }
        if let Err(e) = self.write(&mut i, &rec) {
            self.store.release(rec.len() as u64);
            tracing::error!(target: "acpd::journal", { "session.id" = %self.session_id }, "journal: cannot write the session's metadata: {e}");
        }
    }

    /// Appends whole records at the end (one `write(2)`), opening the file on this run's first
    /// write; under `fsync = "always"` the data is on stable storage before this returns.
    fn write(&self, i: &mut Inner, rec: &[u8]) -> std::io::Result<()> {
        let mut buf;
        let mut data = rec;
        if !i.opened {
            let opened =
                json!({"bootId": self.store.boot_id, "fsync": self.store.cfg.fsync.as_str()});
            let open_rec = encode(Kind::Opened, opened.to_string().as_bytes());
            self.store.reserve_unchecked(open_rec.len() as u64);
            buf = open_rec;
            buf.extend_from_slice(rec);
            data = &buf;
        }
        let file = match &i.file {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(OpenOptions::new().append(true).open(&i.path)?);
                // A file that a crash left longer than its last intact record is cut first.
                if f.metadata()?.len() != i.len {
                    f.set_len(i.len)?;
                }
                i.file = Some(f.clone());
                self.store.register(&self.session_id, f.clone());
                f
            }
        };
        if let Err(e) = (&*file).write_all(data) {
            // A short write leaves a partial record: cut it so later appends stay readable.
            let _ = file.set_len(i.len);
            return Err(e);
        }
        i.opened = true;
        i.len += data.len() as u64;
        match self.store.cfg.fsync {
            Fsync::Always => file.sync_data()?,
            Fsync::Interval => self.store.mark_dirty(&self.session_id),
        }
        Ok(())
    }

    /// Stops journaling this session: the event `id` and every later one are dropped (counted),
    /// a `Sealed` record says so (best effort: the disk may be full), and the next start gives
    /// the session a new event epoch so no id a client saw is reused.
    fn seal(&self, i: &mut Inner, id: u64, reason: Reason, why: &str) {
        super::count_drop(reason, 1);
        tracing::error!(
            target: "acpd::journal",
            { "session.id" = %self.session_id },
            "journal: event {id} and later ones of session {} are not journaled: {why} ({}); they are still sent to live clients, and the session gets a new event epoch at the next start",
            self.session_id,
            reason.as_str()
        );
        let rec = encode(
            Kind::Sealed,
            json!({"nextId": id, "reason": reason.as_str(), "detail": why})
                .to_string()
                .as_bytes(),
        );
        self.store.reserve_unchecked(rec.len() as u64);
        if let Err(e) = self.write(i, &rec) {
            self.store.release(rec.len() as u64);
            tracing::error!(target: "acpd::journal", { "session.id" = %self.session_id }, "journal: cannot record the seal either ({e}); the file is renamed so the next start still resets the epoch");
            let sealed = i.path.with_extension("sealed");
            if std::fs::rename(&i.path, &sealed).is_ok() {
                i.path = sealed;
            }
        }
        i.sealed = Some(reason);
    }

    /// Makes room for `need` more bytes under the per-session cap: the oldest events are dropped
    /// until the file is at most half the cap (header, latest metadata and a `Compacted` record
    /// lead the new file), written beside it and renamed over it.
    fn compact(&self, i: &mut Inner, need: u64) {
        let cap = self.store.cfg.max_session_bytes;
        let target = (cap / 2).saturating_sub(need);
        // The first indexed event from which the rest of the file fits the target.
        let Some(&(cut_id, cut_at)) = i
            .index
            .iter()
            .find(|(_, at)| i.len - at <= target)
            .or(i.index.last())
        else {
            return;
        };
        if cut_id <= i.first_id {
            return; // nothing older to drop
        }
        match self.rewrite(i, cut_id, cut_at) {
            Ok(dropped) => {
                super::count_drop(Reason::Compacted, dropped);
                tracing::warn!(
                    target: "acpd::journal",
                    { "session.id" = %self.session_id },
                    "journal: session {} reached its cap of {cap} bytes: {dropped} oldest events compacted away (events from {cut_id} kept)",
                    self.session_id
                );
            }
            Err(e) => tracing::error!(
                target: "acpd::journal",
                { "session.id" = %self.session_id },
                "journal: compaction of session {} failed: {e}",
                self.session_id
            ),
        }
    }

    fn rewrite(&self, i: &mut Inner, cut_id: u64, cut_at: u64) -> std::io::Result<u64> {
        let tmp = i.path.with_extension("compact");
        let mut head = MAGIC.to_vec();
        head.extend(encode(Kind::Header, &serde_json::to_vec(&i.header)?));
        if !i.meta.is_null() {
            head.extend(encode(Kind::Meta, i.meta.to_string().as_bytes()));
        }
        head.extend(encode(
            Kind::Compacted,
            json!({"firstId": cut_id}).to_string().as_bytes(),
        ));
        let opened = json!({"bootId": self.store.boot_id, "fsync": self.store.cfg.fsync.as_str()});
        head.extend(encode(Kind::Opened, opened.to_string().as_bytes()));
        let mut out = File::create(&tmp)?;
        out.write_all(&head)?;
        let mut src = File::open(&i.path)?;
        src.seek(SeekFrom::Start(cut_at))?;
        std::io::copy(&mut (&mut src).take(i.len - cut_at), &mut out)?;
        out.sync_data()?;
        std::fs::rename(&tmp, &i.path)?;
        self.store.sync_dir();
        let shift = head.len() as i64 - cut_at as i64;
        let old_len = i.len;
        i.len = (i.len as i64 + shift) as u64;
        self.store.release(old_len.saturating_sub(i.len));
        i.index.retain(|(id, _)| *id >= cut_id);
        for (_, at) in &mut i.index {
            *at = (*at as i64 + shift) as u64;
        }
        let dropped = cut_id - i.first_id;
        i.events = i.events.saturating_sub(dropped);
        i.first_id = cut_id;
        i.lost = Some(format!(
            "events before {cut_id} were compacted away (state.journal_max_session_bytes)"
        ));
        let file = Arc::new(OpenOptions::new().append(true).open(&i.path)?);
        self.store.register(&self.session_id, file.clone());
        i.file = Some(file);
        i.opened = true;
        Ok(dropped)
    }

    /// The journaled frames with ids in `range`, oldest first. Reads a snapshot: the file as
    /// long as it was when the call began (appends go on meanwhile).
    pub fn read_frames(&self, range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Bytes)> {
        let (file, start, end) = {
            let i = self.lock();
            if i.removed || *range.end() < i.first_id || *range.start() > i.last_id {
                return Vec::new();
            }
            let start = i
                .index
                .iter()
                .take_while(|(id, _)| id <= range.start())
                .last()
                .map_or_else(
                    || i.index.first().map_or(i.len, |(_, at)| *at),
                    |(_, at)| *at,
                );
            // Opened under the lock: a compaction renames a new file in, and these offsets
            // belong to the file open now.
            match File::open(&i.path) {
                Ok(f) => (f, start, i.len),
                Err(e) => {
                    tracing::error!(target: "acpd::journal", { "session.id" = %self.session_id }, "journal: cannot read: {e}");
                    return Vec::new();
                }
            }
        };
        let mut out = Vec::new();
        let mut at = start;
        let mut chunk = vec![0u8; 256 * 1024];
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_at = start; // file offset of buf[0]
        while at < end {
            // Fill the buffer until it holds the next whole record.
            let need = {
                let off = (at - buf_at) as usize;
                match decode(&buf[off..]) {
                    Decoded::Record {
                        kind,
                        payload,
                        size,
                    } => {
                        if kind == Kind::Event {
                            let (id, frame) = event_parts(payload);
                            if id > *range.end() {
                                break;
                            }
                            if range.contains(&id) {
                                out.push((id, Bytes::copy_from_slice(frame)));
                            }
                        }
                        at += size as u64;
                        None
                    }
                    Decoded::Incomplete => {
                        let have = buf.len() - off;
                        let want = if have >= PREFIX {
                            PREFIX
                                + u32::from_le_bytes([
                                    buf[off],
                                    buf[off + 1],
                                    buf[off + 2],
                                    buf[off + 3],
                                ]) as usize
                        } else {
                            PREFIX
                        };
                        Some(want.saturating_sub(have))
                    }
                    Decoded::Corrupt(why) => {
                        tracing::error!(target: "acpd::journal", { "session.id" = %self.session_id }, "journal: record at offset {at} unreadable ({why})");
                        break;
                    }
                }
            };
            if let Some(need) = need {
                // Drop what was consumed, then read at least `need` more bytes.
                let off = (at - buf_at) as usize;
                buf.drain(..off);
                buf_at = at;
                let file_at = buf_at + buf.len() as u64;
                if file_at >= end {
                    break;
                }
                let want = need.max(chunk.len()).min((end - file_at) as usize);
                if chunk.len() < want {
                    chunk.resize(want, 0);
                }
                match file.read_exact_at(&mut chunk[..want], file_at) {
                    Ok(()) => buf.extend_from_slice(&chunk[..want]),
                    Err(e) => {
                        tracing::error!(target: "acpd::journal", { "session.id" = %self.session_id }, "journal: read failed: {e}");
                        break;
                    }
                }
            }
        }
        out
    }

    /// Clean shutdown: on stable storage, with a `Synced` record after this run's appends.
    pub(super) fn finish(&self) {
        let mut i = self.lock();
        let Some(file) = i.file.clone() else { return };
        if i.removed || !i.opened {
            return;
        }
        let rec = encode(
            Kind::Synced,
            json!({"bootId": self.store.boot_id}).to_string().as_bytes(),
        );
        let r = (&*file).write_all(&rec).and_then(|()| file.sync_data());
        match r {
            Ok(()) => {
                i.len += rec.len() as u64;
                self.store.reserve_unchecked(rec.len() as u64);
            }
            Err(e) => {
                let _ = file.set_len(i.len);
                tracing::error!(target: "acpd::journal", { "session.id" = %self.session_id }, "journal: final sync failed: {e}");
            }
        }
    }

    /// The session was closed: its journal goes.
    pub(super) fn remove(&self) {
        let mut i = self.lock();
        if i.removed {
            return;
        }
        i.removed = true;
        i.file = None;
        self.store.unregister(&self.session_id);
        self.store.release(i.len);
        if let Err(e) = std::fs::remove_file(&i.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(target: "acpd::journal", { "session.id" = %self.session_id }, "journal: cannot remove {}: {e}", i.path.display());
        }
        self.store.sync_dir();
    }
}
