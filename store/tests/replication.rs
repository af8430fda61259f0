//! Replication at the store level: copy a tree's blocks from one store to another the way the
//! swarm does (ask `missing_blocks`, fetch, `put_blocks`, repeat), then `import`; and the
//! checks that refuse trees that do not extend the current one or are malformed.

use serde_json::value::RawValue;
use shoal_store::{
    cid, Cid, Error, EventFilter, ImportAttempt, Imported, NewEvent, Reader, SourceId, Store,
    StoreConfig, Writer,
};

fn ev(i: u64, tag: &str) -> NewEvent {
    NewEvent {
        semantics: "robot".into(),
        name: "mission".into(),
        tags: vec![tag.to_string()],
        lamport: i,
        timestamp: i * 1000,
        payload: RawValue::from_string(format!("{{\"step\":{i}}}")).unwrap(),
    }
}

fn sync(from: &Reader, to: &mut Writer, to_reader: &Reader, root: &Cid) -> usize {
    let mut rounds = 0;
    loop {
        let missing = to_reader.missing_blocks(root).unwrap();
        if missing.is_empty() {
            return rounds;
        }
        rounds += 1;
        let blocks: Vec<_> = missing
            .iter()
            .map(|c| (*c, from.get_block(c).unwrap().unwrap()))
            .collect();
        to.put_blocks(&blocks).unwrap();
    }
}

fn all(r: &Reader, s: &SourceId) -> Vec<(u64, String)> {
    r.events(s, 0..=u64::MAX, &EventFilter::all(), false)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.offset, e.payload.get().to_string())
        })
        .collect()
}

#[test]
fn import_copies_and_extends() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.sqlite"), StoreConfig::debug()).unwrap();
    let b = Store::open(&dir.path().join("b.sqlite"), StoreConfig::debug()).unwrap();
    let (mut wa, mut wb) = (a.writer().unwrap(), b.writer().unwrap());
    let (ra, rb) = (a.reader().unwrap(), b.reader().unwrap());
    let src = SourceId::new("a");

    let mut roots = Vec::new();
    for i in 0..12u64 {
        let events: Vec<_> = (i * 5..i * 5 + 5).map(|j| ev(j, "x")).collect();
        roots.push(wa.append(&src, events).unwrap().root);
    }
    let first = roots[3];
    assert!(matches!(
        wb.import(&src, first),
        Err(Error::MissingBlock(_))
    ));
    assert!(sync(&ra, &mut wb, &rb, &first) > 0);
    assert_eq!(
        wb.import(&src, first).unwrap(),
        shoal_store::Imported {
            first: 0,
            last: 19,
            last_lamport: 19
        }
    );
    assert_eq!(all(&rb, &src), all(&ra, &src)[..20].to_vec());

    // Pack on A, then B imports the packed, longer tree: same events, new shape.
    let packed = wa.pack(&src).unwrap().root.unwrap();
    sync(&ra, &mut wb, &rb, &packed);
    assert_eq!(
        wb.import(&src, packed).unwrap(),
        shoal_store::Imported {
            first: 20,
            last: 59,
            last_lamport: 59
        }
    );
    assert_eq!(all(&rb, &src), all(&ra, &src));
    assert_eq!(rb.offsets().unwrap().get(&src), Some(59));

    // Going back is refused, and so is the current root.
    sync(&ra, &mut wb, &rb, &roots[5]);
    assert!(matches!(
        wb.import(&src, roots[5]),
        Err(Error::NotExtending { .. })
    ));
    assert!(matches!(
        wb.import(&src, packed),
        Err(Error::NotExtending { .. })
    ));
}

#[test]
fn import_refuses_a_fork() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.sqlite"), StoreConfig::debug()).unwrap();
    let f = Store::open(&dir.path().join("f.sqlite"), StoreConfig::debug()).unwrap();
    let b = Store::open(&dir.path().join("b.sqlite"), StoreConfig::debug()).unwrap();
    let (mut wa, mut wf, mut wb) = (
        a.writer().unwrap(),
        f.writer().unwrap(),
        b.writer().unwrap(),
    );
    let (ra, rf, rb) = (
        a.reader().unwrap(),
        f.reader().unwrap(),
        b.reader().unwrap(),
    );
    let src = SourceId::new("a");
    let honest = wa
        .append(&src, (0..8).map(|i| ev(i, "x")).collect())
        .unwrap()
        .root;
    // Same source id, different history, longer.
    let fork = wf
        .append(&src, (0..20).map(|i| ev(i, "forged")).collect())
        .unwrap()
        .root;
    sync(&ra, &mut wb, &rb, &honest);
    wb.import(&src, honest).unwrap();
    sync(&rf, &mut wb, &rb, &fork);
    assert!(matches!(
        wb.import(&src, fork),
        Err(Error::NotExtending { .. })
    ));
    assert_eq!(all(&rb, &src), all(&ra, &src));
}

#[test]
fn put_blocks_rejects_bad_hashes_and_malformed_cbor_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
    let mut w = s.writer().unwrap();
    let r = s.reader().unwrap();
    let good = b"good".to_vec();
    let good_cid = cid::cid_of(cid::RAW, &good);
    let liar = cid::cid_of(cid::RAW, b"something else");
    assert!(matches!(
        w.put_blocks(&[(good_cid, good.clone()), (liar, good.clone())]),
        Err(Error::HashMismatch { .. })
    ));
    assert!(!r.has_block(&good_cid).unwrap(), "all or nothing");
    // Correct hash, but not dag-cbor: a peer cannot make us store undecodable structure.
    let junk = vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let junk_cid = cid::cid_of(cid::DAG_CBOR, &junk);
    assert!(matches!(
        w.put_blocks(&[(junk_cid, junk)]),
        Err(Error::Corrupt { .. })
    ));
    w.put_blocks(&[(good_cid, good.clone())]).unwrap();
    assert_eq!(r.get_block(&good_cid).unwrap(), Some(good));
}

#[test]
fn import_of_a_malformed_tree_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
    let mut w = s.writer().unwrap();
    let src = SourceId::new("peer");
    // Well-formed dag-cbor that is not a banyan node, and one that looks like one but is not.
    let candidates: Vec<Vec<u8>> = vec![
        vec![0x83, 0x00, 0x80, 0x40],          // [0, [], b""]
        vec![0x83, 0x00, 0x80, 0x43, 1, 2, 3], // [0, [], b"\1\2\3"]
        vec![0xa1, 0x61, 0x61, 0x01],          // {"a": 1}
        vec![0x64, b'j', b'u', b'n', b'k'],    // "junk"
    ];
    for data in candidates {
        let c = cid::cid_of(cid::DAG_CBOR, &data);
        w.put_blocks(&[(c, data)]).unwrap();
        assert!(w.import(&src, c).is_err());
    }
    let raw = cid::cid_of(cid::RAW, b"x");
    w.put_blocks(&[(raw, b"x".to_vec())]).unwrap();
    assert!(w.import(&src, raw).is_err());
    assert!(s.reader().unwrap().source(&src).unwrap().is_none());
}

/// Imports `targets` into `to` the way the replicator batches them: each round puts the
/// blocks the previous round found missing (from whichever of `from` has them) and retries
/// the targets still missing some, in one `import_batch`. Returns each target's final answer.
fn batch_sync(
    from: &[&Reader],
    to: &mut Writer,
    targets: &[(SourceId, Cid)],
) -> Vec<Result<ImportAttempt, Error>> {
    let mut answers: Vec<Option<Result<ImportAttempt, Error>>> =
        targets.iter().map(|_| None).collect();
    let mut wanted: Vec<Cid> = Vec::new();
    for _round in 0..64 {
        let pending: Vec<usize> = (0..targets.len())
            .filter(|&i| answers[i].is_none())
            .collect();
        if pending.is_empty() {
            return answers.into_iter().map(Option::unwrap).collect();
        }
        let blocks: Vec<(Cid, Vec<u8>)> = wanted
            .iter()
            .map(|c| {
                let data = from.iter().find_map(|r| r.get_block(c).unwrap());
                (
                    *c,
                    data.expect("every wanted block is in one of the sources"),
                )
            })
            .collect();
        let batch: Vec<_> = pending.iter().map(|&i| targets[i].clone()).collect();
        wanted.clear();
        for (i, answer) in pending
            .into_iter()
            .zip(to.import_batch(&blocks, &batch, 1024).unwrap())
        {
            match answer {
                Ok(ImportAttempt::Missing(m)) => wanted.extend(m),
                other => answers[i] = Some(other),
            }
        }
    }
    panic!("still missing blocks after 64 rounds");
}

#[test]
fn import_batch_imports_many_sources_and_fails_each_alone() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.sqlite"), StoreConfig::debug()).unwrap();
    let f = Store::open(&dir.path().join("f.sqlite"), StoreConfig::debug()).unwrap();
    let b = Store::open(&dir.path().join("b.sqlite"), StoreConfig::debug()).unwrap();
    let (mut wa, mut wf, mut wb) = (
        a.writer().unwrap(),
        f.writer().unwrap(),
        b.writer().unwrap(),
    );
    let (ra, rf, rb) = (
        a.reader().unwrap(),
        f.reader().unwrap(),
        b.reader().unwrap(),
    );
    let (s1, s2) = (SourceId::new("s1"), SourceId::new("s2"));
    wa.append(&s1, (0..5).map(|i| ev(i, "x")).collect())
        .unwrap();
    let r1 = wa
        .append(&s1, (5..10).map(|i| ev(i, "x")).collect())
        .unwrap()
        .root;
    let r2 = wa
        .append(&s2, (0..4).map(|i| ev(i, "y")).collect())
        .unwrap()
        .root;

    let answers = batch_sync(&[&ra], &mut wb, &[(s1.clone(), r1), (s2.clone(), r2)]);
    let imported: Vec<_> = answers
        .into_iter()
        .map(|a| match a {
            Ok(ImportAttempt::Imported { imported, events }) => (imported, events.map(|e| e.len())),
            other => panic!("not imported: {other:?}"),
        })
        .collect();
    assert_eq!(
        imported,
        vec![
            (
                Imported {
                    first: 0,
                    last: 9,
                    last_lamport: 9
                },
                Some(10)
            ),
            (
                Imported {
                    first: 0,
                    last: 3,
                    last_lamport: 3
                },
                Some(4)
            )
        ]
    );
    assert_eq!(all(&rb, &s1), all(&ra, &s1));
    assert_eq!(all(&rb, &s2), all(&ra, &s2));

    // s1 grows, s2 is forged (longer, other history): s1 imports, s2 fails alone.
    let r1b = wa.append(&s1, vec![ev(10, "x")]).unwrap().root;
    let fork = wf
        .append(&s2, (0..9).map(|i| ev(i, "forged")).collect())
        .unwrap()
        .root;
    let answers = batch_sync(
        &[&ra, &rf],
        &mut wb,
        &[(s1.clone(), r1b), (s2.clone(), fork)],
    );
    assert!(matches!(
        answers[0],
        Ok(ImportAttempt::Imported {
            imported: Imported {
                first: 10,
                last: 10,
                last_lamport: 10
            },
            ..
        })
    ));
    assert!(matches!(answers[1], Err(Error::NotExtending { .. })));
    assert_eq!(all(&rb, &s1), all(&ra, &s1));
    assert_eq!(all(&rb, &s2), all(&ra, &s2));

    // The current tree again: `Current`, nothing written.
    let answers = wb.import_batch(&[], &[(s1.clone(), r1b)], 1024).unwrap();
    assert!(matches!(answers[0], Ok(ImportAttempt::Current)));
}

#[test]
fn import_batch_with_a_bad_block_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.sqlite"), StoreConfig::debug()).unwrap();
    let b = Store::open(&dir.path().join("b.sqlite"), StoreConfig::debug()).unwrap();
    let (mut wa, mut wb) = (a.writer().unwrap(), b.writer().unwrap());
    let (ra, rb) = (a.reader().unwrap(), b.reader().unwrap());
    let src = SourceId::new("a");
    let first = wa
        .append(&src, (0..3).map(|i| ev(i, "x")).collect())
        .unwrap()
        .root;
    batch_sync(&[&ra], &mut wb, &[(src.clone(), first)]);
    let next = wa.append(&src, vec![ev(3, "x")]).unwrap().root;
    // Every block of the next tree that B lacks, plus one whose bytes do not match its CID.
    let blocks: Vec<_> = rb
        .missing_blocks(&next)
        .unwrap()
        .iter()
        .map(|c| (*c, ra.get_block(c).unwrap().unwrap()))
        .collect();
    let liar = cid::cid_of(cid::RAW, b"something else");
    let mut bad = blocks.clone();
    bad.push((liar, b"good".to_vec()));
    assert!(matches!(
        wb.import_batch(&bad, &[(src.clone(), next)], 1024),
        Err(Error::HashMismatch { .. })
    ));
    assert!(!rb.has_block(&blocks[0].0).unwrap(), "all or nothing");
    assert_eq!(rb.offsets().unwrap().get(&src), Some(2));
    // The same without the liar is fine, and later batches work (the transaction is closed).
    let answers = batch_sync(&[&ra], &mut wb, &[(src.clone(), next)]);
    assert!(matches!(answers[0], Ok(ImportAttempt::Imported { .. })));
    assert_eq!(all(&rb, &src), all(&ra, &src));
}

/// Lamports order events across sources and pick the winner of a name: a peer's tree whose
/// lamports do not increase, or pass what JavaScript clients can read (issue 12 item 1), is
/// refused and the source keeps its tree.
#[test]
fn import_refuses_lamports_that_do_not_increase_or_pass_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let b = Store::open(&dir.path().join("b.sqlite"), StoreConfig::debug()).unwrap();
    let (mut wb, rb) = (b.writer().unwrap(), b.reader().unwrap());
    let cases: [(&str, Vec<u64>, Vec<u64>); 4] = [
        ("decreasing", vec![1, 2, 3], vec![5, 4]),
        ("repeated", vec![1, 2, 3], vec![3]),
        (
            "past the limit",
            vec![1],
            vec![shoal_store::MAX_LAMPORT + 1],
        ),
        ("within one append", vec![], vec![7, 7]),
    ];
    for (i, (what, before, after)) in cases.into_iter().enumerate() {
        let a = Store::open(
            &dir.path().join(format!("a{i}.sqlite")),
            StoreConfig::debug(),
        )
        .unwrap();
        let (mut wa, ra) = (a.writer().unwrap(), a.reader().unwrap());
        let src = SourceId::new(format!("s{i}"));
        let lamported = |l: &[u64]| l.iter().map(|&l| ev(l, "x")).collect::<Vec<_>>();
        let mut good = None;
        if !before.is_empty() {
            let root = wa.append(&src, lamported(&before)).unwrap().root;
            sync(&ra, &mut wb, &rb, &root);
            wb.import(&src, root).unwrap();
            good = Some(root);
        }
        let bad = wa.append(&src, lamported(&after)).unwrap().root;
        sync(&ra, &mut wb, &rb, &bad);
        let err = wb.import(&src, bad).unwrap_err();
        assert!(
            matches!(&err, Error::NotExtending { reason, .. } if reason.contains("lamport")),
            "{what}: {err}"
        );
        assert_eq!(rb.source(&src).unwrap().map(|s| s.root), good, "{what}");
    }
}
