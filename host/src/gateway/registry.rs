//! Who sent an item: every agent child gets its own ingest credential at spawn, and every prompt
//! the bridge dispatches is remembered by its trace id, so the gateway can attribute what it
//! receives to the child, its workspace and, where the item belongs to a prompt's trace, the
//! session and prompt.

use opentelemetry::KeyValue;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use crate::telemetry::semconv::{CHILD_ID, PROMPT_ID, SESSION_ID, WORKSPACE_ID};

/// Prompts remembered for attribution: agents export a turn's spans after it ends, so entries
/// stay until newer prompts push them out, not until the turn ends. An entry used since it was
/// last considered for eviction is kept: a long turn whose agent keeps exporting keeps its
/// entry however many prompts start meanwhile.
const PROMPTS_KEPT: usize = 4096;

/// One agent child, as the gateway knows it.
#[derive(Debug)]
pub struct ChildEntry {
    pub child_id: String,
    pub workspace_id: String,
    /// What the `child` enrichment hook added for this child; set once it ran.
    enrichment: Mutex<Vec<KeyValue>>,
}

impl ChildEntry {
    /// The attributes every item from this child carries.
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut out = vec![
            KeyValue::new(CHILD_ID, self.child_id.clone()),
            KeyValue::new(WORKSPACE_ID, self.workspace_id.clone()),
        ];
        out.extend(
            self.enrichment
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        out
    }
}

/// What the prompts of one session on one child have in common: the session, the child, and
/// what the `dispatch` hook added. The prompts share one copy while these stay the same, as
/// they do for a session's life unless a plugin varies them: 4,096 kept prompts then hold one
/// copy per session, not one each.
#[derive(Debug, PartialEq)]
struct TurnFacts {
    session_id: Box<str>,
    child_id: Box<str>,
    enrichment: Box<[KeyValue]>,
}

#[derive(Debug)]
struct PromptFacts {
    turn: Arc<TurnFacts>,
    prompt_id: Box<str>,
    /// Used since the eviction clock last passed it (see `Prompts`).
    used: bool,
}

/// Prompts by trace id, and their trace ids in a queue, oldest first. Eviction is a clock (a
/// second chance): the oldest entry goes unless it was used since it last reached the front,
/// in which case it goes to the back instead. A prompt whose agent keeps exporting thus stays,
/// and the queue holds each kept prompt once (16 bytes), where a queue of every use grew to
/// four times the prompts kept.
#[derive(Default)]
struct Prompts {
    map: HashMap<[u8; 16], PromptFacts>,
    order: VecDeque<[u8; 16]>,
    /// Each session's latest `TurnFacts`, which its next prompt shares when they are equal;
    /// dropped with the last kept prompt holding them.
    turns: HashMap<Box<str>, Arc<TurnFacts>>,
}

impl Prompts {
    fn note(&mut self, id: [u8; 16], prompt_id: &str, turn: TurnFacts) {
        let turn = match self.turns.get(&turn.session_id) {
            Some(t) if **t == turn => t.clone(),
            _ => {
                let t = Arc::new(turn);
                self.turns.insert(t.session_id.clone(), t.clone());
                t
            }
        };
        let facts = PromptFacts {
            turn,
            prompt_id: prompt_id.into(),
            used: false,
        };
        if let Some(f) = self.map.get_mut(&id) {
            // The same trace noted again (already queued): the newer facts hold, and a use
            // since the clock last passed it still counts.
            let facts = PromptFacts {
                used: f.used,
                ..facts
            };
            let old = std::mem::replace(f, facts);
            self.release(&old.turn);
            return;
        }
        // Room first, so the queue never grows past the bound.
        while self.map.len() >= PROMPTS_KEPT {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            match self.map.get_mut(&old) {
                Some(f) if f.used => {
                    f.used = false;
                    self.order.push_back(old);
                }
                _ => {
                    if let Some(f) = self.map.remove(&old) {
                        self.release(&f.turn);
                    }
                }
            }
        }
        self.map.insert(id, facts);
        self.order.push_back(id);
    }

    /// A prompt holding `turn` is gone: when only the session's entry still holds it (the
    /// count is taken under the registry's lock, where every clone is made), that goes too.
    fn release(&mut self, turn: &Arc<TurnFacts>) {
        if Arc::strong_count(turn) == 2
            && self
                .turns
                .get(&turn.session_id)
                .is_some_and(|t| Arc::ptr_eq(t, turn))
        {
            self.turns.remove(&turn.session_id);
        }
    }
}

#[derive(Default)]
pub struct Registry {
    by_key: RwLock<HashMap<String, Arc<ChildEntry>>>,
    prompts: Mutex<Prompts>,
}

impl Registry {
    /// A new credential for a child about to be spawned.
    pub fn register(&self, child_id: &str, workspace_id: &str) -> String {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let entry = Arc::new(ChildEntry {
            child_id: child_id.to_string(),
            workspace_id: workspace_id.to_string(),
            enrichment: Mutex::default(),
        });
        self.by_key
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), entry);
        key
    }

    pub fn child(&self, key: &str) -> Option<Arc<ChildEntry>> {
        self.by_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn entry_of(&self, child_id: &str) -> Option<(String, Arc<ChildEntry>)> {
        self.by_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, e)| e.child_id == child_id)
            .map(|(k, e)| (k.clone(), e.clone()))
    }

    pub fn enrich_child(&self, child_id: &str, attributes: Vec<KeyValue>) {
        if let Some((_, e)) = self.entry_of(child_id) {
            *e.enrichment.lock().unwrap_or_else(|p| p.into_inner()) = attributes;
        }
    }

    /// The child is gone: its credential stops working.
    pub fn forget(&self, child_id: &str) {
        if let Some((key, _)) = self.entry_of(child_id) {
            self.by_key
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
    }

    pub fn note_prompt(
        &self,
        trace_id: [u8; 16],
        child_id: &str,
        session_id: &str,
        prompt_id: &str,
        enrichment: Vec<KeyValue>,
    ) {
        let turn = TurnFacts {
            session_id: session_id.into(),
            child_id: child_id.into(),
            enrichment: enrichment.into(),
        };
        self.prompts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(trace_id, prompt_id, turn);
    }

    /// The session and prompt of an item in `trace_id`, when that prompt ran on this child (a
    /// child cannot claim another child's prompt).
    pub fn prompt_attributes(&self, trace_id: &[u8], child_id: &str) -> Vec<KeyValue> {
        let Ok(id) = <[u8; 16]>::try_from(trace_id) else {
            return Vec::new();
        };
        let mut p = self.prompts.lock().unwrap_or_else(|p| p.into_inner());
        match p.map.get_mut(&id) {
            Some(f) if &*f.turn.child_id == child_id => {
                f.used = true;
                let mut out = Vec::with_capacity(f.turn.enrichment.len() + 2);
                out.push(KeyValue::new(SESSION_ID, f.turn.session_id.to_string()));
                out.push(KeyValue::new(PROMPT_ID, f.prompt_id.to_string()));
                out.extend_from_slice(&f.turn.enrichment);
                out
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_per_child_and_prompts_belong_to_their_child() {
        let r = Registry::default();
        let a = r.register("child-1", "ws1");
        let b = r.register("child-2", "ws1");
        assert_ne!(a, b);
        assert_eq!(r.child(&a).unwrap().child_id, "child-1");
        assert!(r.child("nope").is_none());
        r.note_prompt([7; 16], "child-1", "s1", "p1", vec![]);
        assert_eq!(r.prompt_attributes(&[7; 16], "child-1").len(), 2);
        assert!(r.prompt_attributes(&[7; 16], "child-2").is_empty());
        assert!(r.prompt_attributes(&[7; 3], "child-1").is_empty());
        r.forget("child-1");
        assert!(r.child(&a).is_none());
        assert!(r.child(&b).is_some());
    }

    fn id(i: u32) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        id
    }

    #[test]
    fn remembers_a_bounded_number_of_prompts_and_keeps_the_ones_in_use() {
        let r = Registry::default();
        r.note_prompt(id(0), "c", "s", "long", vec![]);
        for i in 1..(10 * PROMPTS_KEPT as u32) {
            r.note_prompt(id(i), "c", "s", "p", vec![]);
            // The long turn's agent keeps exporting now and then.
            if i % 1000 == 0 {
                assert!(!r.prompt_attributes(&id(0), "c").is_empty(), "after {i}");
            }
        }
        assert!(!r.prompt_attributes(&id(0), "c").is_empty());
        assert!(
            r.prompt_attributes(&id(1), "c").is_empty(),
            "unused ones go"
        );
        let g = r.prompts.lock().unwrap();
        assert_eq!(g.map.len(), PROMPTS_KEPT);
        assert_eq!(
            g.order.len(),
            PROMPTS_KEPT,
            "one queue entry per kept prompt"
        );
    }

    #[test]
    fn a_trace_noted_twice_is_kept_once_with_its_newer_facts() {
        let r = Registry::default();
        r.note_prompt(id(1), "c", "s", "first", vec![]);
        // The agent exported under the prompt before its enrichment was noted.
        assert_eq!(r.prompt_attributes(&id(1), "c").len(), 2);
        r.note_prompt(id(1), "c", "s", "second", vec![KeyValue::new("k", "v")]);
        let g = r.prompts.lock().unwrap();
        assert!(
            g.map[&id(1)].used,
            "a use before the second note still counts"
        );
        drop(g);
        let got = r.prompt_attributes(&id(1), "c");
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].value.as_str(), "second");
        let g = r.prompts.lock().unwrap();
        assert_eq!((g.map.len(), g.order.len()), (1, 1));
        assert_eq!(
            g.turns.len(),
            1,
            "the first facts went with the entry they were in"
        );
    }

    /// A session's prompts share their facts while those stay the same; facts that change start
    /// a new copy, and a session's copy goes with its last kept prompt.
    #[test]
    fn a_sessions_prompts_share_one_copy_of_their_facts() {
        let r = Registry::default();
        for i in 0..10 {
            r.note_prompt(id(i), "c", "s1", &format!("p{i}"), vec![]);
        }
        r.note_prompt(id(10), "c", "s1", "p10", vec![KeyValue::new("k", "v")]);
        r.note_prompt(id(11), "c", "s2", "p11", vec![]);
        {
            let g = r.prompts.lock().unwrap();
            let first = &g.map[&id(0)].turn;
            assert!((1..10).all(|i| Arc::ptr_eq(first, &g.map[&id(i)].turn)));
            assert!(!Arc::ptr_eq(first, &g.map[&id(10)].turn));
            assert_eq!(g.turns.len(), 2);
        }
        let got = r.prompt_attributes(&id(3), "c");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].value.as_str(), "s1");
        assert_eq!(got[1].value.as_str(), "p3");
        let got = r.prompt_attributes(&id(10), "c");
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].value.as_str(), "v");
        // Newer prompts push all of these out (the two used ones after their second chance):
        // no session's copy outlives its prompts.
        for i in 100..(100 + 2 * PROMPTS_KEPT as u32) {
            r.note_prompt(id(i), "c", "s3", "p", vec![]);
        }
        let g = r.prompts.lock().unwrap();
        assert_eq!(g.map.len(), PROMPTS_KEPT);
        assert_eq!(g.turns.keys().map(|k| &**k).collect::<Vec<_>>(), ["s3"]);
    }
}
