use serde_json::json;
use shoal_engine::{Event, OffsetMap, SourceId};

use super::*;

fn ev(source: &str, offset: u64, semantics: &str, name: &str, tags: &[&str]) -> Event {
    Event {
        source: SourceId::new(source),
        offset,
        lamport: offset,
        timestamp: 1,
        semantics: semantics.into(),
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        payload: RawValue::from_string("{\"a\":1}".into()).unwrap(),
    }
}

#[test]
fn frames_parse_and_name_fields() {
    match parse_frame(r#"{"type":"request","serviceId":"x","requestId":3,"payload":{"a":1}}"#) {
        Ok(Incoming::Request {
            service,
            id,
            payload,
        }) => {
            assert_eq!((service.as_str(), id), ("x", 3));
            assert_eq!(payload.unwrap().get(), "{\"a\":1}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse_frame(r#"{"type":"cancel","requestId":7}"#),
        Ok(Incoming::Cancel { id: 7 })
    ));
    let (id, e) = parse_frame("garbage").unwrap_err();
    assert_eq!(id, None);
    assert!(e.0.starts_with("malformed frame"));
    let (_, e) = parse_frame(r#"{"type":"request","serviceId":"x"}"#).unwrap_err();
    assert!(e.0.starts_with("requestId"), "{e:?}");
    let (id, e) = parse_frame(r#"{"type":"request","requestId":1}"#).unwrap_err();
    assert_eq!(id, Some(1));
    assert!(e.0.starts_with("serviceId"));
    let (_, e) = parse_frame(r#"{"type":"bogus","requestId":1}"#).unwrap_err();
    assert!(e.0.starts_with("type"));
}

#[test]
fn out_frames_are_json() {
    let v: Value = serde_json::from_str(&next(4, "[1]")).unwrap();
    assert_eq!(v, json!({"type":"next","requestId":4,"payload":[1]}));
    let v: Value = serde_json::from_str(&complete(4)).unwrap();
    assert_eq!(v, json!({"type":"complete","requestId":4}));
    let v: Value = serde_json::from_str(&error(
        2,
        &ErrorKind::UnknownEndpoint {
            endpoint: "/x".into(),
        },
    ))
    .unwrap();
    assert_eq!(v["kind"]["type"], "unknownEndpoint");
    assert_eq!(v["kind"]["endpoint"], "/x");
    assert!(v["kind"]["validEndpoints"].as_array().unwrap().len() > 5);
    let e = ev("src", 3, "s\"q", "n", &["t1"]);
    let v: Value = serde_json::from_str(&events_array([&e])).unwrap();
    assert_eq!(
        v,
        json!([{"sourceId":"src","psn":3,"lamport":3,"timestamp":1,"semantics":"s\"q",
            "name":"n","tags":["t1"],"payload":{"a":1}}])
    );
}

#[test]
fn offset_maps_with_defaults() {
    let present: OffsetMap = [(SourceId::new("a"), 10), (SourceId::new("b"), 5)]
        .into_iter()
        .collect();
    let m = OffsetMapWithDefault::parse(&json!({"psns":{"a":3},"default":"min"}), "p").unwrap();
    let lower = m.lower(&present);
    assert_eq!(lower.get(&SourceId::new("a")), Some(3));
    assert_eq!(lower.get(&SourceId::new("b")), None);
    let upper = m.upper(&present).unwrap();
    assert_eq!(upper.get(&SourceId::new("a")), Some(3));
    assert_eq!(upper.get(&SourceId::new("b")), None);
    let max = OffsetMapWithDefault::parse(&json!({"psns":{},"default":"max"}), "p").unwrap();
    assert_eq!(max.upper(&present), None);
    assert_eq!(max.lower(&present).get(&SourceId::new("b")), Some(u64::MAX));
    assert!(max.admits(&SourceId::new("z"), 1_000));
    let e =
        OffsetMapWithDefault::parse(&json!({"psns":{"a":"x"},"default":"max"}), "p").unwrap_err();
    assert!(e.0.starts_with("p.psns.a"), "{e:?}");
    let e = OffsetMapWithDefault::parse(&json!({"psns":{}}), "p").unwrap_err();
    assert!(e.0.starts_with("p.default"), "{e:?}");
}

#[test]
fn tag_subscriptions_follow_api_md() {
    let me = SourceId::new("me");
    let set = SubscriptionSet::parse(
        &json!({"type":"tags","subscriptions":[{"tags":["semantics:s","fish_name:n"],"local":false}]}),
        "p",
    )
    .unwrap();
    // Untagged events count as tagged semantics:/fish_name:.
    assert!(set.matches(&ev("x", 0, "s", "n", &[]), &me));
    assert!(!set.matches(&ev("x", 0, "s", "m", &[]), &me));
    // Tagged events match on their tags only.
    assert!(set.matches(
        &ev("x", 0, "_t_", "_t_", &["semantics:s", "fish_name:n", "z"]),
        &me
    ));
    assert!(!set.matches(&ev("x", 0, "s", "n", &["other"]), &me));
    // The placeholder carries no implicit tag.
    let set = SubscriptionSet::parse(
        &json!({"type":"tags","subscriptions":[{"tags":["semantics:_t_"],"local":false}]}),
        "p",
    )
    .unwrap();
    assert!(!set.matches(&ev("x", 0, "_t_", "_t_", &[]), &me));
    // local: only this node's events.
    let set = SubscriptionSet::parse(
        &json!({"type":"tags","subscriptions":[{"tags":["a"],"local":true}]}),
        "p",
    )
    .unwrap();
    assert!(set.matches(&ev("me", 0, "s", "n", &["a"]), &me));
    assert!(!set.matches(&ev("x", 0, "s", "n", &["a"]), &me));
    // The engine filter is a superset of the exact rule.
    let set = SubscriptionSet::parse(
        &json!({"type":"tags","subscriptions":[{"tags":["semantics:s"],"local":false}]}),
        "p",
    )
    .unwrap();
    let f = set.filter(&me);
    for e in [
        ev("x", 0, "s", "n", &[]),
        ev("x", 0, "_t_", "_t_", &["semantics:s"]),
    ] {
        assert!(set.matches(&e, &me));
        assert!(f.matches(&e));
    }
    let e = SubscriptionSet::parse(&json!({"type":"tags","subscriptions":[{"tags":[1]}]}), "p")
        .unwrap_err();
    assert!(e.0.starts_with("p.subscriptions[0].tags"), "{e:?}");
}

#[test]
fn or_subscriptions_treat_empty_as_any() {
    let me = SourceId::new("me");
    let set = SubscriptionSet::parse(
        &json!({"type":"or","subscriptions":[{"semantics":"s","name":"","sourceId":""}]}),
        "p",
    )
    .unwrap();
    assert!(set.matches(&ev("x", 0, "s", "n", &[]), &me));
    assert!(set.filter(&me).matches(&ev("x", 0, "s", "zz", &[])));
    assert!(!set.matches(&ev("x", 0, "t", "n", &[]), &me));
}

mod never_panics {
    //! Issue 12 item 9's audit: every parser of client frames answers any input with a value
    //! or a `badRequest`, never a panic, and what it accepts is safe to use.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frames(v in crate::json::arbitrary(), text in "\\PC{0,40}") {
            let _ = parse_frame(&text);
            let _ = parse_frame(&v.to_string());
            let frame = json!({"type": "request", "serviceId": v.clone(), "requestId": v.clone(),
                "payload": v.clone()});
            let _ = parse_frame(&frame.to_string());
            let cancel = json!({"type": "cancel", "requestId": v.clone()});
            let _ = parse_frame(&cancel.to_string());
        }

        #[test]
        fn payload_shapes(v in crate::json::arbitrary(), psn in any::<u64>()) {
            let me = SourceId::new("me");
            let mut present = OffsetMap::new();
            present.update(SourceId::new("a"), psn);
            for shape in [v.clone(), json!({"psns": v.clone(), "default": v.clone()}),
                          json!({"psns": {"a": v.clone()}, "default": "min"})] {
                if let Ok(m) = OffsetMapWithDefault::parse(&shape, "p") {
                    let _ = m.lower(&present);
                    let _ = m.upper(&present);
                    let _ = m.admits(&SourceId::new("a"), psn);
                }
            }
            for shape in [v.clone(), json!({"type": "or", "subscriptions": v.clone()}),
                          json!({"type": "tags", "subscriptions": [{"tags": v.clone()}]})] {
                if let Ok(set) = SubscriptionSet::parse(&shape, "p") {
                    let _ = set.filter(&me);
                    let _ = set.matches(&ev("a", psn, "s", "n", &["semantics:s"]), &me);
                }
            }
            let _ = EventKey::parse(&v, "p");
            let _ = psn_map(&v, "p");
            if let Value::Object(obj) = &v {
                for name in ["count", "version", "psn", "lamport"] {
                    let _ = uint(obj, "p", name);
                    let _ = int(obj, "p", name);
                    let _ = string(obj, "p", name);
                }
            }
        }
    }
}
