//! Property test: random batches of appends, packs and GC runs, interleaved with random range
//! and filtered reads (forward and reverse), agree with a plain `Vec` of events.

use proptest::prelude::*;
use serde_json::value::RawValue;
use shoal_store::{EventFilter, NewEvent, Selector, SourceId, Store, StoreConfig};

const SEMANTICS: [&str; 3] = ["robot", "machine", "operator"];
const NAMES: [&str; 2] = ["a", "b"];
const TAGS: [&str; 4] = ["t0", "t1", "t2", "t3"];

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(usize, usize, u8, u64)>),
    Pack,
    Gc,
    Read {
        from: u64,
        len: u64,
        filter: FilterSpec,
        reverse: bool,
    },
}

/// (semantics index, name index, tag bits, time range) of one selector.
type SelectorSpec = (Option<usize>, Option<usize>, u8, Option<(u64, u64)>);

#[derive(Debug, Clone)]
struct FilterSpec {
    selectors: Option<Vec<SelectorSpec>>,
    lamport: Option<(u64, u64)>,
    time: Option<(u64, u64)>,
}

impl FilterSpec {
    fn build(&self) -> EventFilter {
        EventFilter {
            selectors: self.selectors.as_ref().map(|sels| {
                sels.iter()
                    .map(|(s, n, tags, time)| Selector {
                        semantics: s.map(|i| SEMANTICS[i].to_string()),
                        name: n.map(|i| NAMES[i].to_string()),
                        tags: tag_list(*tags),
                        time: time.map(|(a, b)| a.min(b)..=a.max(b)),
                    })
                    .collect()
            }),
            lamport: self.lamport.map(|(a, b)| a..=b),
            time: self.time.map(|(a, b)| a..=b),
        }
    }
}

fn tag_list(bits: u8) -> Vec<String> {
    TAGS.iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, t)| t.to_string())
        .collect()
}

fn op() -> impl Strategy<Value = Op> {
    let event = (0..3usize, 0..2usize, 0u8..16, 0u64..1000);
    let selector = (
        proptest::option::of(0..3usize),
        proptest::option::of(0..2usize),
        0u8..16,
        proptest::option::of((0u64..1000, 0u64..1000)),
    );
    let filter = (
        proptest::option::of(proptest::collection::vec(selector, 0..3)),
        proptest::option::of((0u64..300, 0u64..300)),
        proptest::option::of((0u64..1000, 0u64..1000)),
    )
        .prop_map(|(selectors, lamport, time)| FilterSpec {
            selectors,
            lamport: lamport.map(|(a, b)| (a.min(b), a.max(b))),
            time: time.map(|(a, b)| (a.min(b), a.max(b))),
        });
    prop_oneof![
        4 => proptest::collection::vec(event, 1..40).prop_map(Op::Append),
        1 => Just(Op::Pack),
        1 => Just(Op::Gc),
        4 => (0u64..300, 0u64..300, filter, any::<bool>()).prop_map(|(from, len, filter, reverse)| {
            Op::Read { from, len, filter, reverse }
        }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Model {
    offset: u64,
    lamport: u64,
    time: u64,
    semantics: String,
    name: String,
    tags: Vec<String>,
    payload: String,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn log_agrees_with_vec(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        let r = store.reader().unwrap();
        let source = SourceId::new("src");
        let mut model: Vec<Model> = Vec::new();
        for op in ops {
            match op {
                Op::Append(events) => {
                    let batch: Vec<NewEvent> = events
                        .iter()
                        .map(|(s, n, tags, time)| {
                            let offset = model.len() as u64;
                            let m = Model {
                                offset,
                                lamport: offset,
                                time: *time,
                                semantics: SEMANTICS[*s].into(),
                                name: NAMES[*n].into(),
                                tags: tag_list(*tags),
                                payload: format!("{{\"o\":{offset},\"s\":\"{}\"}}", SEMANTICS[*s]),
                            };
                            model.push(m.clone());
                            NewEvent {
                                semantics: m.semantics,
                                name: m.name,
                                tags: m.tags,
                                lamport: m.lamport,
                                timestamp: m.time,
                                payload: RawValue::from_string(m.payload).unwrap(),
                            }
                        })
                        .collect();
                    let n = batch.len() as u64;
                    let a = w.append(&source, batch).unwrap();
                    prop_assert_eq!(a.last + 1, model.len() as u64);
                    prop_assert_eq!(a.first + n, model.len() as u64);
                }
                Op::Pack => {
                    w.pack(&source).unwrap();
                }
                Op::Gc => {
                    w.gc(10_000).unwrap();
                    prop_assert!(store.reader().unwrap().verify().unwrap().is_sound());
                }
                Op::Read { from, len, filter, reverse } => {
                    let f = filter.build();
                    let to = from.saturating_add(len);
                    let got: Vec<Model> = r
                        .events(&source, from..=to, &f, reverse)
                        .unwrap()
                        .map(|e| {
                            let e = e.unwrap();
                            prop_assert_eq!(&e.source, &source);
                            Ok(Model {
                                offset: e.offset,
                                lamport: e.lamport,
                                time: e.timestamp,
                                semantics: e.semantics,
                                name: e.name,
                                tags: e.tags,
                                payload: e.payload.get().to_string(),
                            })
                        })
                        .collect::<Result<_, TestCaseError>>()?;
                    let mut want: Vec<Model> = model
                        .iter()
                        .filter(|m| m.offset >= from && m.offset <= to)
                        .filter(|m| f.matches(m.lamport, m.time, &m.semantics, &m.name, &m.tags))
                        .cloned()
                        .collect();
                    if reverse {
                        want.reverse();
                    }
                    prop_assert_eq!(got, want);
                }
            }
        }
        let info = r.source(&source).unwrap();
        prop_assert_eq!(info.map(|i| i.count).unwrap_or(0), model.len() as u64);
    }
}
