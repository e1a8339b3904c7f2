//! The journal's on-disk record format.
//!
//! A journal file is the 8-byte magic `ACPDJNL1`, then records, each framed as
//!
//! ```text
//! len: u32 LE | crc: u32 LE | kind: u8 | payload: len - 1 bytes
//! ```
//!
//! `len` counts the kind byte and the payload; `crc` is CRC32C (Castagnoli) over the four `len`
//! bytes, the kind and the payload, so a damaged length is caught like a damaged payload. An
//! `Event` payload is the event id (u64 LE) followed by the SSE frame exactly as it was sent;
//! every other kind carries one JSON object.

/// The first bytes of every journal file (the version is part of it).
pub const MAGIC: &[u8; 8] = b"ACPDJNL1";
/// Bytes before a record's kind: `len` and `crc`.
pub const PREFIX: usize = 8;
/// The largest record a reader accepts (a frame is bounded by the agent's line limit, 64 MiB by
/// default); a larger length is damage, not a record.
pub const MAX_RECORD: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The session's identity: id, workspace, agent command, epoch, creation time, boot id.
    Header = 1,
    /// The session's metadata (display name, pull requests, announced state), whole: the last
    /// one wins.
    Meta = 2,
    /// One event: id and SSE frame.
    Event = 3,
    /// Events from `nextId` on were not journaled (a cap or a write error).
    Sealed = 4,
    /// Events before `firstId` were removed by compaction.
    Compacted = 5,
    /// The session's event epoch changed at recovery (the journal lost events clients may have
    /// seen): ids before it belong to the old epoch.
    EpochReset = 6,
    /// A daemon run (boot id, fsync policy) starts appending.
    Opened = 7,
    /// Everything before this record was on stable storage (clean shutdown, or recovery synced it).
    Synced = 8,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Header,
            2 => Self::Meta,
            3 => Self::Event,
            4 => Self::Sealed,
            5 => Self::Compacted,
            6 => Self::EpochReset,
            7 => Self::Opened,
            8 => Self::Synced,
            _ => return None,
        })
    }
}

/// One framed record, ready to write.
pub fn encode(kind: Kind, payload: &[u8]) -> Vec<u8> {
    encode_parts(kind, &[payload])
}

/// An `Event` record: the id, then the frame.
pub fn encode_event(id: u64, frame: &[u8]) -> Vec<u8> {
    encode_parts(Kind::Event, &[&id.to_le_bytes(), frame])
}

/// Appends an `Event` record (`event_len(frame)` bytes) to `out`: several are written together.
pub fn encode_event_into(out: &mut Vec<u8>, id: u64, frame: &[u8]) {
    encode_parts_into(out, Kind::Event, &[&id.to_le_bytes(), frame]);
}

/// The length of an `Event` record of `frame`.
pub fn event_len(frame: &[u8]) -> usize {
    PREFIX + 1 + 8 + frame.len()
}

fn encode_parts(kind: Kind, parts: &[&[u8]]) -> Vec<u8> {
    // `encode_parts_into` reserves the record's exact size.
    let mut out = Vec::new();
    encode_parts_into(&mut out, kind, parts);
    out
}

fn encode_parts_into(out: &mut Vec<u8>, kind: Kind, parts: &[&[u8]]) {
    let start = out.len();
    let body_len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    out.reserve(PREFIX + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    for p in parts {
        out.extend_from_slice(p);
    }
    let rec = &mut out[start..];
    let crc = checksum(&rec[..4], &rec[PREFIX..]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(len: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len), body)
}

/// What the bytes at a record boundary hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, intact record and how many bytes it took.
    Record {
        kind: Kind,
        payload: &'a [u8],
        size: usize,
    },
    /// The bytes end inside a record (a torn write, or a truncated file).
    Incomplete,
    /// A record that fails its checksum, names no known kind, or has an impossible length.
    Corrupt(&'static str),
}

/// Decodes the record at the start of `buf` (which must not be empty).
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < PREFIX {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_RECORD {
        return Decoded::Corrupt("impossible record length");
    }
    if buf.len() < PREFIX + len {
        return Decoded::Incomplete;
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[PREFIX..PREFIX + len];
    if checksum(&buf[..4], body) != crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    let Some(kind) = Kind::from_u8(body[0]) else {
        return Decoded::Corrupt("unknown record kind");
    };
    if kind == Kind::Event && len < 9 {
        return Decoded::Corrupt("event record without an id");
    }
    Decoded::Record {
        kind,
        payload: &body[1..],
        size: PREFIX + len,
    }
}

/// An `Event` payload's id and frame.
pub fn event_parts(payload: &[u8]) -> (u64, &[u8]) {
    let mut id = [0u8; 8];
    id.copy_from_slice(&payload[..8]);
    (u64::from_le_bytes(id), &payload[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let rec = encode_event(42, b"id: 42\nevent: x\ndata: {}\n\n");
        match decode(&rec) {
            Decoded::Record {
                kind,
                payload,
                size,
            } => {
                assert_eq!(kind, Kind::Event);
                assert_eq!(size, rec.len());
                assert_eq!(
                    event_parts(payload),
                    (42, &b"id: 42\nevent: x\ndata: {}\n\n"[..])
                );
            }
            other => panic!("{other:?}"),
        }
        let meta = encode(Kind::Meta, br#"{"displayName":"n"}"#);
        assert!(
            matches!(decode(&meta), Decoded::Record { kind: Kind::Meta, payload, .. } if payload == br#"{"displayName":"n"}"#)
        );
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let rec = encode_event(7, b"frame bytes");
        for cut in 0..rec.len() {
            assert_eq!(
                decode(&rec[..cut.max(1)]),
                Decoded::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let rec = encode_event(7, b"id: 7\nevent: session_update\ndata: {\"a\":1}\n\n");
        for byte in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[byte] ^= 1 << bit;
                match decode(&bad) {
                    Decoded::Record { .. } => panic!("flip of byte {byte} bit {bit} not caught"),
                    // A flipped length can also read as a longer (incomplete) record.
                    Decoded::Incomplete | Decoded::Corrupt(_) => {}
                }
            }
        }
    }

    #[test]
    fn records_follow_each_other() {
        let mut buf = Vec::new();
        for id in 1..=3 {
            buf.extend(encode_event(id, format!("frame {id}").as_bytes()));
        }
        let mut at = 0;
        let mut ids = Vec::new();
        while at < buf.len() {
            let Decoded::Record { payload, size, .. } = decode(&buf[at..]) else {
                panic!()
            };
            ids.push(event_parts(payload).0);
            at += size;
        }
        assert_eq!(ids, [1, 2, 3]);
    }
}
