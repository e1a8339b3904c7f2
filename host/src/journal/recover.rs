//! Reading a journal back: a scan at start-up that checks every record, finds where the intact
//! records end, and collects the session's identity, metadata, epoch and event index.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

use super::format::{Decoded, Kind, MAGIC, decode, event_parts};

/// One event in `INDEX_EVERY` is indexed (id, file offset): reads seek close to the first id
/// they want without an index entry per event in memory.
pub const INDEX_EVERY: u64 = 64;

/// The agent command line a session's child ran.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentCommand {
    pub program: String,
    pub args: Vec<String>,
}

/// A session's identity, the first record of its journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub v: u32,
    pub session_id: String,
    /// The id the agent knows the session by (acpd uses the agent's id as its own).
    pub agent_session_id: String,
    pub workspace_id: String,
    pub workspace_cwd: String,
    pub created_at_ms: u64,
    pub epoch: String,
    pub agent: AgentCommand,
    /// The machine's boot id when the file was created (power-loss detection).
    pub boot_id: String,
    /// The fsync policy of the run that created it.
    pub fsync: String,
}

/// What recovery discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Where the intact records end.
    pub offset: u64,
    /// Bytes after it that were not a readable record.
    pub discarded: u64,
    /// `incomplete record` (a torn write or a truncated file), `checksum mismatch`, ...
    pub reason: &'static str,
}

/// A scanned journal.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub path: PathBuf,
    pub header: Header,
    /// The last `Meta` record (Null when none).
    pub meta: Value,
    /// The header's epoch, or the last `EpochReset`'s.
    pub epoch: String,
    /// The first event id the file holds (`last_id + 1` when it holds none).
    pub first_id: u64,
    /// The last event id the file holds (or the floor a compaction or reset left).
    pub last_id: u64,
    pub events: u64,
    pub index: Vec<(u64, u64)>,
    /// A `Sealed` record after the last reset: events from then on were not journaled.
    pub sealed: Option<Value>,
    /// Why older history is missing (compaction, an earlier reset), if it is.
    pub lost: Option<String>,
    /// The end of the last intact record.
    pub good_len: u64,
    pub damage: Option<Damage>,
    /// The boot id of the last run that appended (`Opened`, else the header's).
    pub last_boot: String,
    /// That run's fsync policy.
    pub last_fsync: String,
    /// A `Synced` record follows that run's last append.
    pub synced: bool,
}

/// Why a file could not be used at all.
#[derive(Debug)]
pub struct Unusable(pub String);

fn json(payload: &[u8]) -> Option<Value> {
    serde_json::from_slice(payload).ok()
}

/// Reads and checks a whole journal file.
pub fn scan(path: &Path) -> Result<Scanned, Unusable> {
    let bytes = std::fs::read(path).map_err(|e| Unusable(format!("cannot read it: {e}")))?;
    scan_bytes(path, &bytes)
}

pub fn scan_bytes(path: &Path, bytes: &[u8]) -> Result<Scanned, Unusable> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Unusable("not an acpd journal (bad magic)".into()));
    }
    let mut at = MAGIC.len();
    let header = match (at < bytes.len()).then(|| decode(&bytes[at..])) {
        Some(Decoded::Record {
            kind: Kind::Header,
            payload,
            size,
        }) => {
            at += size;
            serde_json::from_slice::<Header>(payload)
                .map_err(|e| Unusable(format!("unreadable header: {e}")))?
        }
        Some(Decoded::Record { .. }) => {
            return Err(Unusable("the first record is not a header".into()));
        }
        Some(Decoded::Corrupt(why)) => return Err(Unusable(format!("damaged header ({why})"))),
        Some(Decoded::Incomplete) | None => {
            return Err(Unusable("incomplete header".into()));
        }
    };
    let mut s = Scanned {
        path: path.to_path_buf(),
        meta: Value::Null,
        epoch: header.epoch.clone(),
        first_id: 0,
        last_id: 0,
        events: 0,
        index: Vec::new(),
        sealed: None,
        lost: None,
        good_len: at as u64,
        damage: None,
        last_boot: header.boot_id.clone(),
        last_fsync: header.fsync.clone(),
        synced: false,
        header,
    };
    let mut since_index = INDEX_EVERY;
    while at < bytes.len() {
        match decode(&bytes[at..]) {
            Decoded::Record {
                kind,
                payload,
                size,
            } => {
                match kind {
                    Kind::Event => {
                        let (id, _) = event_parts(payload);
                        if s.events == 0 {
                            s.first_id = id;
                        }
                        if since_index >= INDEX_EVERY {
                            s.index.push((id, at as u64));
                            since_index = 0;
                        }
                        since_index += 1;
                        s.events += 1;
                        s.last_id = s.last_id.max(id);
                        s.synced = false;
                    }
                    Kind::Meta => s.meta = json(payload).unwrap_or(Value::Null),
                    Kind::Sealed => s.sealed = Some(json(payload).unwrap_or(Value::Null)),
                    Kind::Compacted => {
                        let v = json(payload).unwrap_or(Value::Null);
                        let first = v["firstId"].as_u64().unwrap_or(1);
                        s.last_id = s.last_id.max(first.saturating_sub(1));
                        s.lost = Some(format!(
                            "events before {first} were compacted away (state.journal_max_session_bytes)"
                        ));
                    }
                    Kind::EpochReset => {
                        let v = json(payload).unwrap_or(Value::Null);
                        if let Some(e) = v["epoch"].as_str() {
                            s.epoch = e.to_string();
                        }
                        s.last_id = s.last_id.max(v["lastId"].as_u64().unwrap_or(0));
                        s.sealed = None;
                        let why = v["reason"].as_str().unwrap_or("unknown");
                        s.lost = Some(format!(
                            "the journal lost events ({why}); the event epoch changed"
                        ));
                    }
                    Kind::Opened => {
                        let v = json(payload).unwrap_or(Value::Null);
                        s.last_boot = v["bootId"].as_str().unwrap_or_default().to_string();
                        s.last_fsync = v["fsync"].as_str().unwrap_or_default().to_string();
                        s.synced = false;
                    }
                    Kind::Synced => s.synced = true,
                    Kind::Header => {}
                }
                at += size;
                s.good_len = at as u64;
            }
            Decoded::Incomplete => {
                s.damage = Some(Damage {
                    offset: at as u64,
                    discarded: (bytes.len() - at) as u64,
                    reason: "incomplete record (a torn write or a truncated file)",
                });
                break;
            }
            Decoded::Corrupt(why) => {
                s.damage = Some(Damage {
                    offset: at as u64,
                    discarded: (bytes.len() - at) as u64,
                    reason: why,
                });
                break;
            }
        }
    }
    if s.events == 0 {
        s.first_id = s.last_id + 1;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::super::format::{encode, encode_event};
    use super::*;
    use serde_json::json;

    fn header() -> Header {
        Header {
            v: 1,
            session_id: "s1".into(),
            agent_session_id: "s1".into(),
            workspace_id: "w".into(),
            workspace_cwd: "/w".into(),
            created_at_ms: 1,
            epoch: "e1".into(),
            agent: AgentCommand {
                program: "a".into(),
                args: vec![],
            },
            boot_id: "b".into(),
            fsync: "interval".into(),
        }
    }

    fn file(events: u64) -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        f.extend(encode(
            Kind::Header,
            &serde_json::to_vec(&header()).unwrap(),
        ));
        f.extend(encode(Kind::Meta, br#"{"displayName":"one"}"#));
        for id in 1..=events {
            f.extend(encode_event(id, format!("id: {id}\n\n").as_bytes()));
        }
        f
    }

    #[test]
    fn a_clean_file() {
        let f = file(200);
        let s = scan_bytes(Path::new("x"), &f).unwrap();
        assert_eq!((s.first_id, s.last_id, s.events), (1, 200, 200));
        assert_eq!(s.good_len, f.len() as u64);
        assert!(s.damage.is_none() && s.lost.is_none() && s.sealed.is_none());
        assert_eq!(s.meta, json!({"displayName": "one"}));
        assert_eq!(s.index.len(), 4, "ids 1, 65, 129, 193");
        assert_eq!(s.index[1].0, 65);
        assert_eq!(s.epoch, "e1");
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let whole = file(10);
        let nine = file(9).len();
        for cut in nine + 1..whole.len() {
            let s = scan_bytes(Path::new("x"), &whole[..cut]).unwrap();
            assert_eq!(s.last_id, 9, "cut at {cut}");
            assert_eq!(s.good_len, nine as u64);
            let d = s.damage.unwrap();
            assert_eq!((d.offset, d.discarded), (nine as u64, (cut - nine) as u64));
            assert!(d.reason.starts_with("incomplete"));
        }
    }

    #[test]
    fn a_flipped_byte_stops_the_scan_there() {
        let mut f = file(10);
        let five = file(5).len();
        f[five + 12] ^= 0x40; // inside event 6's frame
        let s = scan_bytes(Path::new("x"), &f).unwrap();
        assert_eq!(s.last_id, 5);
        assert_eq!(s.damage.unwrap().reason, "checksum mismatch");
    }

    #[test]
    fn a_damaged_header_makes_the_file_unusable() {
        let mut f = file(3);
        f[MAGIC.len() + 10] ^= 1;
        assert!(scan_bytes(Path::new("x"), &f).is_err());
        assert!(scan_bytes(Path::new("x"), b"ACPDJNL1").is_err());
        assert!(scan_bytes(Path::new("x"), b"garbage!garbage").is_err());
    }

    #[test]
    fn resets_and_compactions_are_read() {
        let mut f = MAGIC.to_vec();
        f.extend(encode(
            Kind::Header,
            &serde_json::to_vec(&header()).unwrap(),
        ));
        f.extend(encode(Kind::Compacted, br#"{"firstId":50}"#));
        for id in 50..=60 {
            f.extend(encode_event(id, b"x"));
        }
        f.extend(encode(Kind::Sealed, br#"{"nextId":61}"#));
        let s = scan_bytes(Path::new("x"), &f).unwrap();
        assert_eq!((s.first_id, s.last_id), (50, 60));
        assert!(s.sealed.is_some() && s.lost.is_some());
        f.extend(encode(
            Kind::EpochReset,
            br#"{"epoch":"e2","lastId":70,"reason":"sealed"}"#,
        ));
        let s = scan_bytes(Path::new("x"), &f).unwrap();
        assert_eq!((s.epoch.as_str(), s.last_id), ("e2", 70));
        assert!(s.sealed.is_none());
        f.extend(encode(Kind::Synced, b"{}"));
        assert!(scan_bytes(Path::new("x"), &f).unwrap().synced);
    }
}
