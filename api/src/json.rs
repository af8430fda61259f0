//! Hand-written JSON for the hot event encoders (v1 NDJSON and the store API wire): event
//! payloads are already JSON text and go out as they are, never parsed and re-serialized.

/// `s` as a JSON string.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `items` as a JSON array of strings.
pub(crate) fn write_str_array<S: AsRef<str>>(out: &mut Vec<u8>, items: &[S]) {
    out.push(b'[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, s.as_ref());
    }
    out.push(b']');
}

/// Arbitrary JSON for the "never panics on any input" properties of every request parser: the
/// field names and words our parsers look for, mixed with any other text, numbers at their
/// extremes, and nesting.
#[cfg(test)]
pub(crate) fn arbitrary() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    const WORDS: &[&str] = &[
        "data",
        "semantics",
        "name",
        "payload",
        "tags",
        "lowerBound",
        "upperBound",
        "subscriptions",
        "order",
        "source",
        "fromTime",
        "toTime",
        "lamport",
        "lamport-reverse",
        "source-ordered",
        "type",
        "serviceId",
        "requestId",
        "request",
        "cancel",
        "psns",
        "default",
        "min",
        "max",
        "fromPsnsExcluding",
        "toPsnsIncluding",
        "subscriptionSet",
        "sortOrder",
        "eventKey",
        "reverseEventKey",
        "unsorted",
        "count",
        "minEventKey",
        "events",
        "timestamp",
        "psn",
        "sourceId",
        "local",
        "all",
        "empty",
        "or",
        "severity",
        "logName",
        "message",
        "labels",
        "producerName",
        "producerVersion",
        "logTimestamp",
        "additionalData",
        "info",
        "key",
        "psnMap",
        "horizon",
        "cycle",
        "version",
        "tag",
        "blob",
        "special",
        "reportEveryMs",
        "semantics:_t_",
        "fish_name:x",
        "",
    ];
    let word = || {
        prop_oneof![
            3 => proptest::sample::select(WORDS).prop_map(String::from),
            1 => "\\PC{0,8}",
        ]
    };
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just(-1i64),
            Just(0),
            Just(i64::MIN),
            Just(i64::MAX),
            any::<i64>()
        ]
        .prop_map(Value::from),
        prop_oneof![Just(u64::MAX), any::<u64>()].prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        word().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 96, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((word(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}
