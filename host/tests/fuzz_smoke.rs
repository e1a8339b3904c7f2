//! The fuzz targets (`acpd::fuzz`) on stable, as CI runs them: every committed seed in
//! `tests/fuzz/corpus/<target>/`, then proptest-generated inputs (random bytes, and mutations and
//! splices of the seeds). `PROPTEST_CASES` sets the generated cases per target and kind; the
//! long runs are libFuzzer's (`tests/fuzz/README.md`).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::path::PathBuf;

/// Generated cases per target and kind when `PROPTEST_CASES` is unset: enough to exercise
/// every branch the seeds open, small enough for a debug build on two cores.
const DEFAULT_CASES: u32 = 256;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz/corpus")
        .join(target)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// One edit of a seed, the kinds libFuzzer makes most: overwrite, insert, delete, duplicate a
/// range, splice in part of another seed.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes that matter to the parsers (JSON and header punctuation, digits, newlines) as often
    // as arbitrary ones.
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"{}[]\":,-0123456789af\n\r\t \\+.".to_vec()),
    ];
    let at = any::<prop::sample::Index>();
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (
            any::<usize>(),
            at.prop_map(|i| i.index(usize::MAX)),
            1usize..32
        )
            .prop_map(|(i, j, n)| Mutation::Splice(i, j, n)),
    ]
}

fn apply(mut input: Vec<u8>, m: &Mutation, seeds: &[Vec<u8>]) -> Vec<u8> {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
    match *m {
        Mutation::Set(i, b) if !input.is_empty() => {
            let i = i % input.len();
            input[i] = b;
        }
        Mutation::Set(_, b) | Mutation::Insert(_, b) if input.is_empty() => input.push(b),
        Mutation::Insert(i, b) => input.insert(at(i, input.len()), b),
        Mutation::Delete(i, n) => {
            let i = at(i, input.len());
            input.drain(i..(i + n).min(input.len()));
        }
        Mutation::Duplicate(i, n) => {
            let i = at(i, input.len());
            let part = input[i..(i + n).min(input.len())].to_vec();
            input.splice(i..i, part);
        }
        Mutation::Splice(i, j, n) => {
            let other = &seeds[j % seeds.len()];
            let from = at(j, other.len());
            let part = &other[from..(from + n).min(other.len())];
            let i = at(i, input.len());
            input.splice(i..i, part.iter().copied());
        }
        Mutation::Set(..) => unreachable!("guarded above"),
    }
    input
}

/// Runs a target, turning its panic into a test failure that shows the input.
fn run(target: fn(&[u8]), input: &[u8]) -> Result<(), TestCaseError> {
    std::panic::catch_unwind(|| target(input)).map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        TestCaseError::fail(format!(
            "{why}\ninput: {:?}",
            String::from_utf8_lossy(input)
        ))
    })
}

#[test]
fn every_target_has_seeds_and_every_seed_dir_a_target() {
    let names: Vec<&str> = acpd::fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    for name in &names {
        assert!(!seeds(name).is_empty(), "no seeds for {name}");
    }
    let root = corpus_dir("");
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().file_name().into_string().unwrap();
        assert!(names.contains(&dir.as_str()), "corpus/{dir} has no target");
    }
}

fn smoke(name: &str) {
    let (_, target) = *acpd::fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    let seeds = seeds(name);
    for seed in &seeds {
        run(target, seed).unwrap_or_else(|e| panic!("{name} seed: {e}"));
    }
    runner()
        .run(&prop::collection::vec(any::<u8>(), 0..512), |input| {
            run(target, &input)
        })
        .unwrap_or_else(|e| panic!("{name}, random bytes: {e}"));
    let mutated = (
        any::<prop::sample::Index>(),
        prop::collection::vec(mutation(), 1..6),
    );
    runner()
        .run(&mutated, |(seed, mutations)| {
            let mut input = seeds[seed.index(seeds.len())].clone();
            for m in &mutations {
                input = apply(input, m, &seeds);
            }
            run(target, &input)
        })
        .unwrap_or_else(|e| panic!("{name}, mutated seeds: {e}"));
}

#[test]
fn request_body() {
    smoke("request_body");
}

#[test]
fn last_event_id() {
    smoke("last_event_id");
}

#[test]
fn epoch() {
    smoke("epoch");
}

#[test]
fn traceparent() {
    smoke("traceparent");
}

#[test]
fn acp_lines() {
    smoke("acp_lines");
}

#[test]
fn acp_connection() {
    smoke("acp_connection");
}

#[test]
fn plugin_output() {
    smoke("plugin_output");
}
