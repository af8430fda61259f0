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
