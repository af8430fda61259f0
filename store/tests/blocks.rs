//! Property test: the block store behaves like a `HashMap<Cid, Vec<u8>>` under random puts
//! (some with lying CIDs, which must change nothing), gets and has-queries.

use proptest::prelude::*;
use shoal_store::{cid, Cid, Store, StoreConfig};
use std::collections::HashMap;

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<Vec<u8>>),
    PutLie(Vec<u8>, Vec<u8>),
    Get(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let data = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        proptest::collection::vec(data.clone(), 1..5).prop_map(Op::Put),
        (data.clone(), data).prop_map(|(a, b)| Op::PutLie(a, b)),
        (0usize..100).prop_map(Op::Get),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn blocks_behave_like_a_map(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        let r = store.reader().unwrap();
        let mut model: HashMap<Cid, Vec<u8>> = HashMap::new();
        let mut known: Vec<Cid> = Vec::new();
        for op in ops {
            match op {
                Op::Put(blocks) => {
                    let blocks: Vec<(Cid, Vec<u8>)> = blocks
                        .into_iter()
                        .map(|d| (cid::cid_of(cid::RAW, &d), d))
                        .collect();
                    w.put_blocks(&blocks).unwrap();
                    for (c, d) in blocks {
                        known.push(c);
                        model.insert(c, d);
                    }
                }
                Op::PutLie(claimed, actual) => {
                    let c = cid::cid_of(cid::RAW, &claimed);
                    known.push(c);
                    let res = w.put_blocks(&[(c, actual.clone())]);
                    prop_assert_eq!(res.is_ok(), claimed == actual);
                    if claimed == actual {
                        model.insert(c, actual);
                    }
                }
                Op::Get(i) => {
                    if let Some(c) = known.get(i % known.len().max(1)) {
                        prop_assert_eq!(r.get_block(c).unwrap(), model.get(c).cloned());
                        prop_assert_eq!(r.has_block(c).unwrap(), model.contains_key(c));
                    }
                }
            }
        }
        for (c, d) in &model {
            prop_assert_eq!(r.get_block(c).unwrap(), Some(d.clone()));
        }
    }
}
