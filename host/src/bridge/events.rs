//! A session's event bus: a ring of numbered events for replay, and bounded per-subscriber
//! queues. Each event is serialised once into an SSE frame shared by every subscriber; a
//! subscriber that falls behind is evicted and never slows the agent or the others.

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::journal::SessionJournal;

#[derive(Debug, Clone, Copy)]
pub struct BusLimits {
    /// Events the replay ring holds at most.
    pub ring: usize,
    /// Bytes of frames the ring holds at most: events vary in size (a tool call's diff is far
    /// larger than a message chunk), so a count alone does not bound a session's memory.
    pub ring_bytes: usize,
    /// The byte bound while every event is also in the session's journal: replays older than
    /// the ring read the journal, so the ring only spares recent reconnects a disk read.
    pub journaled_ring_bytes: usize,
    pub queue_frames: usize,
    pub queue_bytes: usize,
    pub max_subscribers: usize,
}

/// Counters a bus keeps for what it drops (telemetry reads them).
#[derive(Debug, Default)]
pub struct BusStats {
    pub evicted_subscribers: AtomicU64,
    /// Events evicted from the ring that the journal does not hold: lost to replay.
    pub ring_evicted_events: AtomicU64,
    /// Permission requests answered `cancelled` because too many were pending.
    pub refused_permissions: AtomicU64,
}

impl BusStats {
    pub fn json(&self) -> Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "ringEvictedEvents": n(&self.ring_evicted_events),
            "evictedSubscribers": n(&self.evicted_subscribers),
            "refusedPermissionRequests": n(&self.refused_permissions),
        })
    }
}

pub struct EventBus {
    epoch: String,
    limits: BusLimits,
    inner: Mutex<Inner>,
    /// Some subscriber's queue was at least half full after the last publish.
    behind: AtomicBool,
    pub stats: BusStats,
    /// Every event is written here before any subscriber gets it; replays older than the ring
    /// read it.
    journal: Option<Arc<SessionJournal>>,
}

struct Inner {
    last_id: u64,
    ring: VecDeque<(u64, Bytes)>,
    /// The frames' bytes in `ring`.
    ring_bytes: usize,
    /// The last event known to be in the journal (0: none). A journal that refused one
    /// event (sealed at a cap, a write error) refuses every later one, so the ring holds
    /// everything after it under the unjournaled bound.
    journaled_upto: u64,
    subs: Vec<Sub>,
    /// Events in the ring (and the journal) that the subscribers have not been handed yet
    /// (`publish_all_held`): released by `release`, or before anything else the bus does.
    held: Vec<(u64, Bytes)>,
    closed: bool,
    frames: Frames,
}

impl Inner {
    /// The journal holds every event so far, so the next is expected to go there too (a
    /// journal that refused one refuses every later one).
    fn journaling(&self, has_journal: bool) -> bool {
        has_journal && self.journaled_upto == self.last_id
    }
}

struct Sub {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<SubShared>,
    warned: bool,
}

#[derive(Default)]
struct SubShared {
    queued_bytes: AtomicUsize,
    evicted: AtomicBool,
}

/// What a new subscriber gets: the frames to send first (resync notice, replay,
/// replay_complete), then the live queue.
pub struct Subscription {
    pub preface: Vec<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    shared: Arc<SubShared>,
}

pub enum Next {
    Frame(Bytes),
    /// The subscriber overflowed its queue: send this frame and close.
    Evicted(Bytes),
    /// The bus closed (session closed or daemon shutting down).
    Closed,
}

impl Subscription {
    pub async fn next(&mut self) -> Next {
        match self.rx.recv().await {
            Some(frame) => {
                self.shared
                    .queued_bytes
                    .fetch_sub(frame.len(), Ordering::Relaxed);
                Next::Frame(frame)
            }
            None if self.shared.evicted.load(Ordering::Acquire) => Next::Evicted(synthetic(
                "client_evicted",
                json!({"reason": "queue_overflow"}),
            )),
            None => Next::Closed,
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An event for [`EventBus::publish_all`]: what [`EventBus::publish`] takes as arguments.
pub struct Draft<'a> {
    pub kind: &'a str,
    pub prompt_id: Option<&'a str>,
    pub data: Value,
    pub originator: Option<&'a str>,
}

/// Everything in an event's frame after its id, serialised outside the bus's lock.
fn frame_tail(
    kind: &str,
    prompt_id: Option<&str>,
    data: &Value,
    originator: Option<&str>,
) -> Vec<u8> {
    // Bytes, not a String: the strings are escaped straight into them (a `Value` of each
    // cost an allocation per field per event).
    let mut tail = Vec::with_capacity(128);
    tail.extend_from_slice(b",\"v\":1,\"type\":");
    push_json(&mut tail, kind);
    tail.extend_from_slice(b",\"data\":");
    push_json(&mut tail, data);
    if let Some(p) = prompt_id {
        tail.extend_from_slice(b",\"promptId\":");
        push_json(&mut tail, p);
    }
    if let Some(o) = originator {
        tail.extend_from_slice(b",\"originatorClientId\":");
        push_json(&mut tail, o);
    }
    tail
}

/// Where a bus writes its events' frames: consecutive frames share one buffer (a chunk), and a
/// chunk is freed once the ring and every subscriber's queue have dropped its last frame.
///
/// Why: the ring is a queue of frames evicted oldest first, and with one heap allocation per
/// frame (two: the bytes and their shared count) glibc's heap fragmented under it. A soak of
/// 16 busy sessions without the journal (4 MiB rings) held 67.7 MiB live while the daemon's
/// RSS grew to 108–121 MiB over 500,000 prompts; chunks of 64 KiB fragmented the heap as much,
/// since small allocations split the holes they leave. A busy ring's chunks are 128 KiB, the size
/// from which the daemon has glibc map a block on its own (`cli::tune_malloc`), so they never
/// enter the heap and their pages go back when freed: RSS 82–87 MiB for 65 live, flat
/// (BENCHMARKS.md, "Round twenty-five"). A frame costs no allocation of its own.
struct Frames {
    chunk: BytesMut,
    /// The next chunk's capacity: it doubles from [`Frames::FIRST`] up to the ring's
    /// [`chunk_max`](Frames::chunk_max), so a session that publishes a few events holds a small
    /// chunk, a busy one chunks of one size.
    next: usize,
}

impl Frames {
    const FIRST: usize = 1024;
    /// glibc's mmap threshold as the daemon sets it.
    const MAX: usize = 128 * 1024;
    /// What a frame holds besides its kind and tail: two ids and a timestamp of at most 20
    /// digits each, and 57 bytes of SSE and JSON punctuation.
    const FIXED: usize = 3 * 20 + 57;

    fn new() -> Self {
        Self {
            chunk: BytesMut::new(),
            next: Self::FIRST,
        }
    }

    /// Chunks of a sixteenth of the ring's byte bound, within [1 KiB, 128 KiB]: the chunk being
    /// written and the oldest one, partly evicted, hold at most an eighth more than the bound
    /// (a journaled session's 32 KiB ring: 2 KiB chunks; an unjournaled 4 MiB one, or a
    /// journaled one whose journal stopped taking events: 128 KiB).
    fn chunk_max(ring_bytes: usize) -> usize {
        (ring_bytes / 16).clamp(Self::FIRST, Self::MAX)
    }

    /// The SSE frame of event `id` (under the bus's lock: only the id and the time are written),
    /// for a ring bounded by `ring_bytes`.
    fn frame(&mut self, ring_bytes: usize, id: u64, kind: &str, tail: &[u8]) -> Bytes {
        use std::fmt::Write as _;
        let need = Self::FIXED + kind.len() + tail.len();
        if self.chunk.capacity() < need {
            // The old chunk's buffer lives on in the frames split from it.
            self.chunk = BytesMut::with_capacity(self.next.max(need));
            self.next = (self.next * 2).min(Self::chunk_max(ring_bytes));
        }
        let f = &mut self.chunk;
        let _ = write!(f, "id: {id}\nevent: {kind}\ndata: {{\"id\":{id}");
        f.extend_from_slice(tail);
        let _ = write!(f, ",\"_meta\":{{\"serverTimestamp\":{}}}}}\n\n", now_ms());
        f.split().freeze()
    }
}

/// An id-less frame (replay_complete, resync, warnings, eviction): clients never store its id.
pub fn synthetic(kind: &str, data: Value) -> Bytes {
    let env = json!({"v": 1, "type": kind, "data": data, "_meta": {"serverTimestamp": now_ms()}});
    Bytes::from(format!("event: {kind}\ndata: {env}\n\n"))
}

impl EventBus {
    pub fn new(limits: BusLimits) -> Self {
        Self::journaled(limits, None, uuid::Uuid::new_v4().to_string(), 0)
    }

    /// A bus backed by a journal: a new session's (`last_id` 0), or one restored at start-up,
    /// which keeps its epoch and continues after its last journaled id.
    pub fn journaled(
        limits: BusLimits,
        journal: Option<Arc<SessionJournal>>,
        epoch: String,
        last_id: u64,
    ) -> Self {
        Self {
            epoch,
            limits,
            inner: Mutex::new(Inner {
                last_id,
                ring: VecDeque::new(),
                ring_bytes: 0,
                journaled_upto: last_id,
                subs: Vec::new(),
                held: Vec::new(),
                closed: false,
                frames: Frames::new(),
            }),
            behind: AtomicBool::new(false),
            stats: BusStats::default(),
            journal,
        }
    }

    pub fn journal(&self) -> Option<&Arc<SessionJournal>> {
        self.journal.as_ref()
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn last_id(&self) -> u64 {
        self.lock().last_id
    }

    /// True when a subscriber's queue was at least half full after the last publish: a
    /// publisher that can wait (the agent's reader) should let the SSE writers run first.
    pub fn subscribers_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().subs.len()
    }

    /// The ring's byte bound for an event the journal holds (`journaled`) or does not.
    fn ring_bound(&self, journaled: bool) -> usize {
        if journaled {
            self.limits.journaled_ring_bytes
        } else {
            self.limits.ring_bytes
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned bus still holds consistent data: every mutation completes before any call
        // that could panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event and fans it out. Returns its id, or None once the bus is closed.
    ///
    /// The payload is serialised before the lock is taken; under it only the id is written
    /// into the frame, so subscribers and other publishers wait for a copy, not for serde.
    pub fn publish(
        &self,
        kind: &str,
        prompt_id: Option<&str>,
        data: Value,
        originator: Option<&str>,
    ) -> Option<u64> {
        let tail = frame_tail(kind, prompt_id, &data, originator);
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        self.release_held(&mut inner);
        let id = inner.last_id + 1;
        let bound = self.ring_bound(inner.journaling(self.journal.is_some()));
        let frame = inner.frames.frame(bound, id, kind, &tail);
        // Durable (written to the OS, or synced under `fsync = "always"`) before any
        // subscriber can see it: a crash loses only events nobody was sent.
        let journaled = self
            .journal
            .as_ref()
            .is_some_and(|j| j.append_event(id, &frame));
        self.commit(&mut inner, id, frame, journaled);
        Some(id)
    }

    /// Publishes consecutive events, as [`publish`](Self::publish) one by one would, with one
    /// journal write for all of them. Returns the last one's id.
    pub fn publish_all(&self, drafts: &[Draft<'_>]) -> Option<u64> {
        self.publish_drafts(drafts, false)
    }

    /// As [`publish_all`](Self::publish_all), but the subscribers are handed the events only
    /// at [`release`](Self::release), or before the bus's next publish, subscription or close,
    /// whichever comes first. They are journaled and in the ring at once, and their ids taken.
    ///
    /// Why: handing them over wakes each subscriber's task. A turn's admission also wakes its
    /// runner, and a tokio worker that wakes two tasks in one poll wakes a parked sibling
    /// worker to take one: a serving thread (real-time when the daemon is lightly loaded) that
    /// then preempts the agent the admission has just written to (BENCHMARKS.md, "Round
    /// seventeen"). The runner releases them instead, on the same worker, once the admission's
    /// poll is done.
    pub fn publish_all_held(&self, drafts: &[Draft<'_>]) -> Option<u64> {
        self.publish_drafts(drafts, true)
    }

    /// Hands the subscribers the events `publish_all_held` kept from them.
    pub fn release(&self) {
        let mut inner = self.lock();
        self.release_held(&mut inner);
    }

    fn release_held(&self, inner: &mut Inner) {
        if inner.held.is_empty() {
            return;
        }
        // Taken and put back, so the vector keeps its capacity for the next turn.
        let mut held = std::mem::take(&mut inner.held);
        for (id, frame) in held.drain(..) {
            self.fan_out(inner, id, &frame);
        }
        inner.held = held;
    }

    fn publish_drafts(&self, drafts: &[Draft<'_>], hold: bool) -> Option<u64> {
        let tails: Vec<Vec<u8>> = drafts
            .iter()
            .map(|d| frame_tail(d.kind, d.prompt_id, &d.data, d.originator))
            .collect();
        let mut inner = self.lock();
        if inner.closed || drafts.is_empty() {
            return None;
        }
        self.release_held(&mut inner);
        let first = inner.last_id + 1;
        let bound = self.ring_bound(inner.journaling(self.journal.is_some()));
        let frames: Vec<(u64, Bytes)> = (first..)
            .zip(drafts.iter().zip(&tails))
            .map(|(id, (d, tail))| (id, inner.frames.frame(bound, id, d.kind, tail)))
            .collect();
        let journaled = self
            .journal
            .as_ref()
            .map_or(0, |j| j.append_events(&frames));
        let last = first + frames.len() as u64 - 1;
        for (n, (id, frame)) in frames.into_iter().enumerate() {
            if hold {
                self.keep(&mut inner, id, frame.clone(), n < journaled);
                inner.held.push((id, frame));
            } else {
                self.commit(&mut inner, id, frame, n < journaled);
            }
        }
        Some(last)
    }

    /// Puts a published event in the ring and every subscriber's queue.
    fn commit(&self, inner: &mut Inner, id: u64, frame: Bytes, journaled: bool) {
        self.keep(inner, id, frame.clone(), journaled);
        self.fan_out(inner, id, &frame);
    }

    /// Puts a published event in the ring (evicting the oldest beyond its bounds).
    fn keep(&self, inner: &mut Inner, id: u64, frame: Bytes, journaled: bool) {
        if journaled {
            inner.journaled_upto = id;
        }
        inner.last_id = id;
        inner.ring_bytes += frame.len();
        inner.ring.push_back((id, frame));
        let max_bytes = self.ring_bound(journaled);
        while inner.ring.len() > self.limits.ring || inner.ring_bytes > max_bytes {
            let Some((old, f)) = inner.ring.pop_front() else {
                break;
            };
            inner.ring_bytes -= f.len();
            // Only an event the journal does not hold is lost to replay.
            if old > inner.journaled_upto {
                self.stats
                    .ring_evicted_events
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Puts a published event in every subscriber's queue.
    fn fan_out(&self, inner: &mut Inner, id: u64, frame: &Bytes) {
        let limits = self.limits;
        let before = inner.subs.len();
        let mut behind = false;
        inner
            .subs
            .retain_mut(|sub| match deliver(sub, id, frame, &limits) {
                Delivery::Evicted => false,
                Delivery::Queued { half_full } => {
                    behind |= half_full;
                    true
                }
            });
        self.behind.store(behind, Ordering::Relaxed);
        let evicted = before - inner.subs.len();
        if evicted > 0 {
            self.stats
                .evicted_subscribers
                .fetch_add(evicted as u64, Ordering::Relaxed);
        }
    }

    /// Registers a subscriber and computes its replay atomically with respect to publish, so
    /// the replay and the live queue neither overlap nor leave a gap. Events older than the
    /// ring come from the journal, read outside the lock; the ring then supplies the rest.
    pub fn subscribe(
        &self,
        last_event_id: Option<u64>,
        epoch: Option<&str>,
    ) -> Result<Subscription, ApiError> {
        let mut from_journal: Vec<(u64, Bytes)> = Vec::new();
        let mut attempts = 0;
        loop {
            let mut inner = self.lock();
            // Those subscribed before get the held events live; this one gets them as replay.
            self.release_held(&mut inner);
            inner.subs.retain(|s| !s.tx.is_closed()); // disconnected clients leave no slot taken
            if inner.subs.len() >= self.limits.max_subscribers {
                return Err(ApiError::new(
                    429,
                    "subscriber_limit_exceeded",
                    "Too many subscribers for this session",
                )
                .with("limit", self.limits.max_subscribers));
            }
            let mut preface = Vec::new();
            if let Some(n) = last_event_id {
                let ring_earliest = inner.ring.front().map_or(inner.last_id + 1, |(id, _)| *id);
                let journal_first = self.journal.as_ref().map(|j| j.state().first_id);
                let earliest = journal_first.map_or(ring_earliest, |f| f.min(ring_earliest));
                let resync = if epoch.is_some_and(|e| e != self.epoch) {
                    Some(("epoch_reset", "the event epoch changed"))
                } else if n > inner.last_id {
                    Some(("epoch_reset", "Last-Event-ID is newer than the last event"))
                } else if n + 1 < earliest {
                    Some((
                        "ring_evicted",
                        "events after Last-Event-ID were evicted from the replay ring",
                    ))
                } else {
                    None
                };
                let from = match resync {
                    Some(_) => 0,
                    None => n,
                };
                // The journal covers what the ring lost: read it without the lock, then check
                // that the ring still starts where the read ended.
                let need_journal = self.journal.is_some() && from + 1 < ring_earliest;
                let have_upto = from_journal.last().map_or(from, |(id, _)| *id);
                if need_journal && have_upto + 1 < ring_earliest {
                    let rest = have_upto + 1..=ring_earliest - 1;
                    if attempts < 3 {
                        attempts += 1;
                        drop(inner);
                        if let Some(j) = &self.journal {
                            from_journal.extend(j.read_frames(rest));
                        }
                        continue;
                    }
                    // Publishing outran three reads (the ring is small once a journal backs
                    // it): the rest is read under the lock, so publishers wait for one read
                    // rather than the client seeing a hole the journal could fill.
                    if let Some(j) = &self.journal {
                        from_journal.extend(j.read_frames(rest));
                    }
                }
                if let Some((reason, detail)) = resync {
                    preface.push(synthetic(
                        "state_resync_required",
                        json!({"reason": reason, "detail": detail, "lastDeliveredId": n, "earliestAvailableId": earliest}),
                    ));
                }
                let journaled = from_journal
                    .iter()
                    .filter(|(id, _)| *id > from && *id < ring_earliest);
                let ringed = inner.ring.iter().filter(|(id, _)| *id > from);
                let replay: Vec<&(u64, Bytes)> = journaled.chain(ringed).collect();
                // A hole (events neither journaled nor still in the ring) is said, not skipped.
                let first = replay.first().map_or(inner.last_id + 1, |(id, _)| *id);
                let contiguous = replay.windows(2).all(|w| w[1].0 == w[0].0 + 1);
                if resync.is_none() && (first != from + 1 || !contiguous) {
                    preface.push(synthetic(
                        "state_resync_required",
                        json!({"reason": "ring_evicted", "detail": "some events after Last-Event-ID are no longer held", "lastDeliveredId": n, "earliestAvailableId": first}),
                    ));
                }
                let mut done = json!({"replayedCount": replay.len()});
                if let Some((id, _)) = replay.last() {
                    done["lastReplayedEventId"] = json!(id);
                }
                if inner.last_id > 0 {
                    done["lastEventId"] = json!(inner.last_id);
                }
                preface.extend(replay.into_iter().map(|(_, f)| f.clone()));
                preface.push(synthetic("replay_complete", done));
            }
            let (tx, rx) = mpsc::channel(self.limits.queue_frames);
            let shared = Arc::new(SubShared::default());
            if !inner.closed {
                inner.subs.push(Sub {
                    tx,
                    shared: shared.clone(),
                    warned: false,
                });
            }
            return Ok(Subscription {
                preface,
                rx,
                shared,
            });
        }
    }

    /// The events the ring still holds with an id in `range`, as `(id, envelope)`: what the
    /// transcript and the export read until a durable journal backs them.
    pub fn retained(&self, range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Value)> {
        let frames: Vec<(u64, Bytes)> = {
            let inner = self.lock();
            inner
                .ring
                .iter()
                .filter(|(id, _)| range.contains(id))
                .cloned()
                .collect()
        };
        frames
            .into_iter()
            .filter_map(|(id, frame)| envelope(&frame).map(|e| (id, e)))
            .collect()
    }

    /// The oldest id the ring still holds (the next one when it is empty).
    pub fn earliest_retained(&self) -> u64 {
        let inner = self.lock();
        inner.ring.front().map_or(inner.last_id + 1, |(id, _)| *id)
    }

    /// Ends every subscription after its queued frames; later publishes are dropped.
    pub fn close(&self) {
        let mut inner = self.lock();
        self.release_held(&mut inner);
        inner.closed = true;
        inner.subs.clear();
    }
}

/// The JSON envelope of an SSE frame (its `data:` line).
pub(crate) fn envelope(frame: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(frame).ok()?;
    let data = text.lines().find_map(|l| l.strip_prefix("data: "))?;
    serde_json::from_str(data).ok()
}

/// Appends `v` as JSON (serialising a string or a `Value` into a `Vec` cannot fail).
fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let _ = serde_json::to_writer(out, v);
}

/// What queuing a frame did to one subscriber.
enum Delivery {
    /// It overflowed (or was gone) and leaves the bus.
    Evicted,
    /// Queued; `half_full` when its queue now holds at least half its frames or bytes.
    Queued { half_full: bool },
}

/// Queues frame `id` for one subscriber.
fn deliver(sub: &mut Sub, id: u64, frame: &Bytes, limits: &BusLimits) -> Delivery {
    if sub.tx.is_closed() {
        return Delivery::Evicted;
    }
    // Bytes are counted before the frame is sent: the receiver subtracts them as soon as it
    // takes the frame, so counting after `try_send` could drive the counter below zero.
    let queued = sub
        .shared
        .queued_bytes
        .fetch_add(frame.len(), Ordering::Relaxed)
        + frame.len();
    if queued > limits.queue_bytes || sub.tx.try_send(frame.clone()).is_err() {
        sub.shared
            .queued_bytes
            .fetch_sub(frame.len(), Ordering::Relaxed);
        sub.shared.evicted.store(true, Ordering::Release);
        return Delivery::Evicted;
    }
    let frames = limits.queue_frames - sub.tx.capacity();
    let frames_high = frames * 4 >= limits.queue_frames * 3;
    let bytes_high = queued * 4 >= limits.queue_bytes * 3;
    let high = frames_high || bytes_high;
    let half_full = frames * 2 >= limits.queue_frames || queued * 2 >= limits.queue_bytes;
    if high && !sub.warned {
        let threshold = match (frames_high, bytes_high) {
            (true, true) => "frames_and_bytes",
            (false, true) => "bytes",
            _ => "frames",
        };
        // The fields qwen serve sends (its client drops a warning without them), and
        // acpd's own `queuedFrames`.
        let warning = synthetic(
            "slow_client_warning",
            json!({"queueSize": frames, "maxQueued": limits.queue_frames, "lastEventId": id,
                   "queuedBytes": queued, "maxQueuedBytes": limits.queue_bytes,
                   "threshold": threshold, "queuedFrames": frames}),
        );
        let len = warning.len();
        sub.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if sub.tx.try_send(warning).is_err() {
            sub.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        sub.warned = true;
    } else if sub.warned && !half_full {
        sub.warned = false;
    }
    Delivery::Queued { half_full }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(ring: usize, frames: usize) -> EventBus {
        EventBus::new(BusLimits {
            ring,
            ring_bytes: usize::MAX,
            journaled_ring_bytes: usize::MAX,
            queue_frames: frames,
            queue_bytes: 1 << 20,
            max_subscribers: 2,
        })
    }

    fn text(b: &Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    fn limits(ring_bytes: usize, journaled_ring_bytes: usize) -> BusLimits {
        BusLimits {
            ring: 8000,
            ring_bytes,
            journaled_ring_bytes,
            queue_frames: 1024,
            queue_bytes: 1 << 20,
            max_subscribers: 4,
        }
    }

    fn ids(frames: &[Bytes]) -> Vec<u64> {
        frames
            .iter()
            .filter_map(|f| {
                text(f)
                    .strip_prefix("id: ")?
                    .split('\n')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// A session's journal in a temporary directory, removed when `_dir` drops.
    struct TempJournal {
        _dir: tempfile::TempDir,
        journal: Arc<SessionJournal>,
    }

    fn journal(max_total: u64) -> TempJournal {
        use crate::journal::{Journal, test_support};
        let dir = test_support::dir();
        let (j, _, _) = Journal::open(dir.path(), test_support::cfg(1 << 30, max_total)).unwrap();
        let journal = j.create(test_support::header("s1", &j), Value::Null);
        TempJournal { _dir: dir, journal }
    }

    #[test]
    fn the_ring_is_bounded_by_bytes_and_counts_what_it_drops() {
        let one = bus(8000, 16);
        one.publish("x", None, json!({"pad": "p".repeat(200)}), None);
        let frame_len = one.lock().ring_bytes;
        let b = EventBus::new(limits(3 * frame_len + 10, usize::MAX));
        for _ in 0..10 {
            b.publish("x", None, json!({"pad": "p".repeat(200)}), None);
        }
        let inner = b.lock();
        assert_eq!(inner.ring.len(), 3, "three frames fit the byte bound");
        let held: usize = inner.ring.iter().map(|(_, f)| f.len()).sum();
        assert_eq!(inner.ring_bytes, held);
        assert!(held <= 3 * frame_len + 10);
        assert_eq!(inner.ring.front().map(|(id, _)| *id), Some(8));
        drop(inner);
        assert_eq!(b.stats.ring_evicted_events.load(Ordering::Relaxed), 7);
        let s = b.subscribe(Some(0), None).unwrap();
        assert!(text(&s.preface[0]).contains("ring_evicted"));
        assert_eq!(ids(&s.preface), [8, 9, 10]);
    }

    #[test]
    fn a_journaled_ring_keeps_little_and_replays_the_rest_from_the_journal() {
        let j = journal(1 << 30);
        let b = EventBus::journaled(
            limits(usize::MAX, 1000),
            Some(j.journal.clone()),
            "e1".into(),
            0,
        );
        for i in 0..200 {
            b.publish("x", None, json!({"n": i, "pad": "p".repeat(100)}), None);
        }
        let inner = b.lock();
        assert!(
            inner.ring_bytes <= 1000 && !inner.ring.is_empty(),
            "{}",
            inner.ring_bytes
        );
        assert!(inner.ring.len() < 10);
        drop(inner);
        // Nothing was lost: every evicted event is in the journal.
        assert_eq!(b.stats.ring_evicted_events.load(Ordering::Relaxed), 0);
        let s = b.subscribe(Some(0), Some("e1")).unwrap();
        assert!(!text(&s.preface[0]).contains("state_resync_required"));
        assert_eq!(ids(&s.preface), (1..=200).collect::<Vec<_>>());
        let s = b.subscribe(Some(150), Some("e1")).unwrap();
        assert_eq!(ids(&s.preface), (151..=200).collect::<Vec<_>>());
    }

    #[test]
    fn once_the_journal_refuses_events_the_ring_keeps_them_under_the_larger_bound() {
        // A total cap that seals the journal after a few events.
        let j = journal(2000);
        let b = EventBus::journaled(
            limits(usize::MAX, 500),
            Some(j.journal.clone()),
            "e1".into(),
            0,
        );
        for i in 0..100 {
            b.publish("x", None, json!({"n": i, "pad": "p".repeat(100)}), None);
        }
        let sealed_at = b.lock().journaled_upto;
        assert!((1..20).contains(&sealed_at), "sealed after {sealed_at}");
        assert_eq!(b.stats.ring_evicted_events.load(Ordering::Relaxed), 0);
        // Its frames' chunks grow to the larger bound's size, not the journaled ring's.
        assert!(b.lock().frames.next > Frames::chunk_max(500));
        let s = b.subscribe(Some(0), Some("e1")).unwrap();
        assert!(!text(&s.preface[0]).contains("state_resync_required"));
        assert_eq!(ids(&s.preface), (1..=100).collect::<Vec<_>>());
    }

    /// A bus on `j`'s journal, epoch `e1`, with a ring of 1 MiB once journaled.
    fn journaled_bus(j: &TempJournal) -> EventBus {
        EventBus::journaled(
            limits(usize::MAX, 1 << 20),
            Some(j.journal.clone()),
            "e1".into(),
            0,
        )
    }

    /// Events of kind `y`, one per `n` (`{"n": n}`), of prompt `p1` from client `c1`.
    fn drafts(ns: impl IntoIterator<Item = u64>) -> Vec<Draft<'static>> {
        ns.into_iter()
            .map(|n| Draft {
                kind: "y",
                prompt_id: Some("p1"),
                data: json!({"n": n}),
                originator: Some("c1"),
            })
            .collect()
    }

    #[tokio::test]
    async fn events_published_together_are_journaled_and_sent_as_single_ones() {
        let j = journal(1 << 30);
        let b = journaled_bus(&j);
        let mut live = b.subscribe(None, None).unwrap();
        b.publish("x", None, json!({"n": 0}), None);
        assert_eq!(b.publish_all(&drafts(1..=3)), Some(4));
        assert_eq!(b.publish_all(&[]), None, "nothing to publish");
        b.publish("x", None, json!({"n": 4}), None);
        let mut got = Vec::new();
        for _ in 0..5 {
            match live.next().await {
                Next::Frame(f) => got.push(f),
                _ => panic!("expected a frame"),
            }
        }
        assert_eq!(ids(&got), [1, 2, 3, 4, 5]);
        let second = text(&got[1]);
        assert!(second.starts_with("id: 2\nevent: y\n"), "{second}");
        assert!(second.contains(r#""data":{"n":1},"promptId":"p1","originatorClientId":"c1""#));
        // The journal has them all, as the ring does: a replay from the journal matches.
        assert_eq!(j.journal.state().last_id, 5);
        assert_eq!(
            j.journal
                .read_frames(1..=5)
                .into_iter()
                .map(|(_, f)| f)
                .collect::<Vec<_>>(),
            got
        );
        assert_eq!(b.lock().journaled_upto, 5);
    }

    #[tokio::test]
    async fn held_events_are_journaled_at_once_and_handed_over_in_order_at_the_first_chance() {
        let j = journal(1 << 30);
        let b = journaled_bus(&j);
        let mut early = b.subscribe(None, None).unwrap();
        fn queued(s: &mut Subscription) -> Vec<u64> {
            let mut got = Vec::new();
            while let Ok(f) = s.rx.try_recv() {
                got.push(f);
            }
            ids(&got)
        }
        // Journaled and in the ring, their ids taken; no subscriber has them yet.
        assert_eq!(b.publish_all_held(&drafts([1, 2])), Some(2));
        assert_eq!(j.journal.state().last_id, 2);
        assert_eq!(b.last_id(), 2);
        assert_eq!(b.retained(1..=2).len(), 2);
        assert_eq!(queued(&mut early), Vec::<u64>::new());
        b.release();
        assert_eq!(queued(&mut early), [1, 2]);
        b.release();
        assert_eq!(queued(&mut early), Vec::<u64>::new(), "handed over once");

        // A publish hands the held ones over first.
        b.publish_all_held(&drafts([3, 4]));
        b.publish("x", None, json!({}), None);
        assert_eq!(queued(&mut early), [3, 4, 5]);

        // A subscriber that arrives while events are held gets them as replay, the earlier
        // one live; neither twice.
        b.publish_all_held(&drafts([6, 7]));
        let mut late = b.subscribe(Some(5), Some("e1")).unwrap();
        assert_eq!(ids(&late.preface), [6, 7]);
        b.release();
        assert_eq!(queued(&mut early), [6, 7]);
        assert_eq!(queued(&mut late), Vec::<u64>::new());

        // A close hands them over before the subscriptions end.
        b.publish_all_held(&drafts([8]));
        b.close();
        for s in [&mut early, &mut late] {
            match s.next().await {
                Next::Frame(f) => assert_eq!(ids(&[f]), [8]),
                _ => panic!("expected the held event"),
            }
            assert!(matches!(s.next().await, Next::Closed));
        }
    }

    #[tokio::test]
    async fn replay_then_live_without_gap() {
        let bus = bus(10, 8);
        for _ in 0..3 {
            bus.publish("x", None, json!({}), None);
        }
        let mut sub = bus.subscribe(Some(1), Some(bus.epoch())).unwrap();
        let pre: Vec<String> = sub.preface.iter().map(text).collect();
        assert!(pre[0].starts_with("id: 2\n") && pre[1].starts_with("id: 3\n"));
        assert!(pre[2].contains("\"replayedCount\":2") && !pre[2].contains("id: "));
        bus.publish("x", None, json!({}), None);
        match sub.next().await {
            Next::Frame(f) => assert!(text(&f).starts_with("id: 4\n")),
            _ => panic!("expected a frame"),
        }
    }

    #[tokio::test]
    async fn reports_subscribers_behind_at_half_a_queue() {
        let bus = bus(100, 4);
        let mut sub = bus.subscribe(None, None).unwrap();
        bus.publish("x", None, json!({}), None);
        assert!(!bus.subscribers_behind(), "one of four queued");
        bus.publish("x", None, json!({}), None);
        assert!(bus.subscribers_behind(), "two of four queued");
        for _ in 0..2 {
            assert!(matches!(sub.next().await, Next::Frame(_)));
        }
        bus.publish("x", None, json!({}), None);
        assert!(!bus.subscribers_behind(), "caught up");
    }

    #[test]
    fn a_frame_is_one_json_envelope() {
        let bus = bus(10, 8);
        let mut sub = bus.subscribe(None, None).unwrap();
        bus.publish(
            "turn_complete",
            Some("p\"1"),
            json!({"a": [1, "x\n"]}),
            Some("c"),
        );
        let Ok(frame) = sub.rx.try_recv() else {
            panic!("no frame")
        };
        let text = text(&frame);
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let env: Value = serde_json::from_str(data).unwrap();
        assert_eq!(env["id"], 1);
        assert_eq!(env["v"], 1);
        assert_eq!(env["type"], "turn_complete");
        assert_eq!(env["data"], json!({"a": [1, "x\n"]}));
        assert_eq!(env["promptId"], "p\"1");
        assert_eq!(env["originatorClientId"], "c");
        assert!(env["_meta"]["serverTimestamp"].as_u64().unwrap() > 0);
        assert!(text.starts_with("id: 1\nevent: turn_complete\ndata: {"));
    }

    /// Frames are carved from shared chunks: consecutive small frames are adjacent in one
    /// buffer, a frame larger than a chunk gets one of its own, chunks grow to a sixteenth of
    /// the ring's bound and no further, and every frame stays whole and exact.
    #[test]
    fn frames_share_chunks_of_a_bounded_size() {
        const RING: usize = 32 * 1024;
        let mut f = Frames::new();
        assert_eq!(Frames::chunk_max(RING), 2048);
        let a = f.frame(RING, u64::MAX, "x", b"");
        let b = f.frame(RING, 2, "x", b"");
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr(), "one chunk");
        assert!(text(&a).starts_with(&format!("id: {}\nevent: x\n", u64::MAX)));
        let big = vec![b'y'; 5000];
        let c = f.frame(RING, 3, "big", &big);
        assert!(c.len() > 5000 && text(&c).contains(&"y".repeat(5000)));
        assert!(text(&c).ends_with("}}\n\n"), "{}", text(&c));
        // However many frames, no chunk is taken larger than the bound (or the frame).
        let mut frames = Vec::new();
        for id in 4..2000 {
            frames.push(f.frame(RING, id, "agent_message_chunk", &[b'z'; 100]));
            assert!(f.chunk.capacity() + frames.last().unwrap().len() <= 2048);
        }
        assert_eq!(f.next, 2048);
        assert_eq!(ids(&frames), (4..2000).collect::<Vec<_>>());
        assert_eq!(Frames::chunk_max(4 << 20), Frames::MAX);
        assert_eq!(Frames::chunk_max(0), Frames::FIRST);
    }

    /// The widest fixed part (ids and a timestamp of 20 digits) fits the reserve made for it:
    /// a frame is never written across two buffers.
    #[test]
    fn the_widest_frame_fits_its_reserve() {
        let a = Frames::new().frame(0, u64::MAX, "k", b"t");
        let fixed_now = a.len() - "k".len() - 1;
        // `now_ms` has 13 digits until the year 2286; the reserve allows 20.
        assert!(fixed_now + 7 <= Frames::FIXED, "{fixed_now}");
    }

    #[test]
    fn resync_on_eviction_and_epoch() {
        let bus = bus(2, 8);
        for _ in 0..5 {
            bus.publish("x", None, json!({}), None);
        }
        let sub = bus.subscribe(Some(1), None).unwrap();
        assert!(text(&sub.preface[0]).contains("ring_evicted"));
        assert_eq!(sub.preface.len(), 4); // resync, 4, 5, replay_complete
        let sub = bus.subscribe(Some(3), Some("other")).unwrap();
        assert!(text(&sub.preface[0]).contains("epoch_reset"));
        assert!(bus.subscribe(None, None).is_err(), "subscriber cap");
    }

    #[tokio::test]
    async fn overflow_evicts_only_the_slow_subscriber() {
        let bus = bus(100, 4);
        let mut slow = bus.subscribe(None, None).unwrap();
        let mut fast = bus.subscribe(None, None).unwrap();
        for i in 0..10 {
            bus.publish("x", None, json!({ "i": i }), None);
            assert!(matches!(fast.next().await, Next::Frame(_)));
        }
        assert_eq!(bus.subscriber_count(), 1);
        let mut saw_warning = false;
        loop {
            match slow.next().await {
                Next::Frame(f) if text(&f).contains("slow_client_warning") => {
                    // What qwen serve's client requires of a warning.
                    let w = envelope(&f).unwrap()["data"].clone();
                    assert_eq!(w["maxQueued"], 4, "{w}");
                    assert!(w["queueSize"].as_u64().is_some_and(|n| n >= 3), "{w}");
                    assert!(w["lastEventId"].as_u64().is_some_and(|n| n >= 1), "{w}");
                    assert!(
                        w["queuedBytes"].is_u64() && w["maxQueuedBytes"].is_u64(),
                        "{w}"
                    );
                    assert_eq!(w["threshold"], "frames", "{w}");
                    saw_warning = true;
                }
                Next::Frame(_) => {}
                Next::Evicted(f) => {
                    assert!(text(&f).contains("queue_overflow"));
                    break;
                }
                Next::Closed => panic!("expected eviction"),
            }
        }
        assert!(saw_warning);
        assert_eq!(bus.stats.evicted_subscribers.load(Ordering::Relaxed), 1);
    }
}
