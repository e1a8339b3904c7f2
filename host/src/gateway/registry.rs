//! Who sent an item: every agent child gets its own ingest credential at spawn, and every prompt
//! the bridge dispatches is remembered by its trace id, so the gateway can attribute what it
//! receives to the child, its workspace and, where the item belongs to a prompt's trace, the
//! session and prompt.

use opentelemetry::KeyValue;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use crate::telemetry::semconv::{CHILD_ID, PROMPT_ID, SESSION_ID, WORKSPACE_ID};

/// Prompts remembered for attribution: agents export a turn's spans after it ends, so entries
/// stay until newer prompts push them out, not until the turn ends. The least recently *used*
/// goes first: a long turn whose agent keeps exporting keeps its entry however many prompts
/// start meanwhile.
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

#[derive(Debug, Clone)]
struct PromptFacts {
    child_id: String,
    attributes: Vec<KeyValue>,
    /// When it was last noted or used (see `Prompts`).
    used: u64,
}

/// Prompts by trace id, and a queue of (trace id, use) in order of use, oldest first. A use
/// pushes a new entry; an entry whose use is not the prompt's latest is stale and skipped at
/// eviction, and the queue is rebuilt when stale entries dominate.
#[derive(Default)]
struct Prompts {
    map: HashMap<[u8; 16], PromptFacts>,
    order: VecDeque<([u8; 16], u64)>,
    clock: u64,
}

impl Prompts {
    fn touch(&mut self, id: [u8; 16]) {
        self.clock += 1;
        let now = self.clock;
        if let Some(p) = self.map.get_mut(&id) {
            p.used = now;
            self.order.push_back((id, now));
        }
        if self.order.len() > 4 * PROMPTS_KEPT {
            let map = &self.map;
            self.order
                .retain(|(id, used)| map.get(id).is_some_and(|p| p.used == *used));
        }
    }

    fn evict(&mut self) {
        while self.map.len() > PROMPTS_KEPT {
            let Some((id, used)) = self.order.pop_front() else {
                return;
            };
            if self.map.get(&id).is_some_and(|p| p.used == used) {
                self.map.remove(&id);
            }
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
        let mut attributes = vec![
            KeyValue::new(SESSION_ID, session_id.to_string()),
            KeyValue::new(PROMPT_ID, prompt_id.to_string()),
        ];
        attributes.extend(enrichment);
        let mut p = self.prompts.lock().unwrap_or_else(|p| p.into_inner());
        p.map.insert(
            trace_id,
            PromptFacts {
                child_id: child_id.to_string(),
                attributes,
                used: 0,
            },
        );
        p.touch(trace_id);
        p.evict();
    }

    /// The session and prompt of an item in `trace_id`, when that prompt ran on this child (a
    /// child cannot claim another child's prompt).
    pub fn prompt_attributes(&self, trace_id: &[u8], child_id: &str) -> Vec<KeyValue> {
        let Ok(id) = <[u8; 16]>::try_from(trace_id) else {
            return Vec::new();
        };
        let mut p = self.prompts.lock().unwrap_or_else(|p| p.into_inner());
        let out = match p.map.get(&id) {
            Some(f) if f.child_id == child_id => f.attributes.clone(),
            _ => return Vec::new(),
        };
        p.touch(id);
        out
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
        assert!(g.order.len() <= 4 * PROMPTS_KEPT + 1, "{}", g.order.len());
    }
}
