//! Typed fields of a request's JSON, for both the v1 HTTP API (`events.rs`) and the Pond store
//! API (`store_api/wire.rs`): each failure names the field's path
//! (`subscriptions[2].name: must be a string`), so a client can find its mistake. The v1 API
//! answers a [`FieldError`] with a 400, the store API with an error frame.
//!
//! Absent and `null` are the same everywhere (JavaScript clients send both).

use std::fmt;

use serde_json::{Map, Value};

/// A request field that is missing or not what it must be; the message starts with its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError(pub String);

impl FieldError {
    pub fn at(path: &str, reason: impl fmt::Display) -> Self {
        FieldError(format!("{path}: {reason}"))
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Field<T> = Result<T, FieldError>;

fn path_of(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// `v` as an object; `what` describes the expected shape in the error.
pub fn object<'a>(v: &'a Value, path: &str, what: &str) -> Field<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| FieldError::at(path, format!("must be {what}")))
}

/// The field `name` of `obj` (at `path`), present and not `null`.
pub fn field<'a>(obj: &'a Map<String, Value>, path: &str, name: &str) -> Field<&'a Value> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(FieldError::at(&path_of(path, name), "missing")),
        Some(v) => Ok(v),
    }
}

/// A required string field.
pub fn string(obj: &Map<String, Value>, path: &str, name: &str) -> Field<String> {
    match field(obj, path, name)? {
        Value::String(s) => Ok(s.clone()),
        _ => Err(FieldError::at(&path_of(path, name), "must be a string")),
    }
}

/// An optional string field.
pub fn opt_string(obj: &Map<String, Value>, path: &str, name: &str) -> Field<Option<String>> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FieldError::at(&path_of(path, name), "must be a string")),
    }
}

/// A required integer ≥ 0.
pub fn uint(obj: &Map<String, Value>, path: &str, name: &str) -> Field<u64> {
    field(obj, path, name)?
        .as_u64()
        .ok_or_else(|| FieldError::at(&path_of(path, name), "must be a non-negative integer"))
}

/// A required number as i64 (Pond sends integers; floats are truncated).
pub fn int(obj: &Map<String, Value>, path: &str, name: &str) -> Field<i64> {
    let v = field(obj, path, name)?;
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        .ok_or_else(|| FieldError::at(&path_of(path, name), "must be a number"))
}

/// An optional list of non-empty strings (absent: empty).
pub fn string_list(obj: &Map<String, Value>, path: &str, name: &str) -> Field<Vec<String>> {
    let bad = || FieldError::at(&path_of(path, name), "must be a list of non-empty strings");
    match obj.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| match t {
                Value::String(t) if !t.is_empty() => Ok(t.clone()),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Refuses keys of `obj` not in `known` (a misspelt key would otherwise be ignored silently);
/// the error names them (each cut to 64 characters), then says `hint` (what is accepted).
pub fn only_known_keys(
    obj: &Map<String, Value>,
    path: &str,
    known: &[&str],
    hint: &str,
) -> Field<()> {
    let unknown: Vec<String> = obj
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| format!("`{}`", k.chars().take(64).collect::<String>()))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(FieldError::at(
        path,
        format!("unknown key(s) {}; {hint}", unknown.join(", ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn errors_name_the_path() {
        let o = obj(json!({"a": 1, "s": "x", "n": null, "l": ["x", ""]}));
        assert_eq!(string(&o, "p", "a").unwrap_err().0, "p.a: must be a string");
        assert_eq!(string(&o, "", "n").unwrap_err().0, "n: missing");
        assert_eq!(opt_string(&o, "p", "n").unwrap(), None);
        assert_eq!(opt_string(&o, "p", "s").unwrap().as_deref(), Some("x"));
        assert_eq!(uint(&o, "p", "a").unwrap(), 1);
        assert_eq!(
            string_list(&o, "q[1]", "l").unwrap_err().0,
            "q[1].l: must be a list of non-empty strings"
        );
        assert_eq!(
            string_list(&o, "p", "absent").unwrap(),
            Vec::<String>::new()
        );
        let e = only_known_keys(&o, "f", &["a", "s", "n"], "a, s or n")
            .unwrap_err()
            .0;
        assert_eq!(e, "f: unknown key(s) `l`; a, s or n");
        assert!(only_known_keys(&o, "f", &["a", "s", "n", "l"], "").is_ok());
    }
}
