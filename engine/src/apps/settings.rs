//! Settings: JSON per scope (an app id, or [`NODE_SCOPE`]), checked against a JSON Schema
//! before anything is stored (API.md "Settings").
//!
//! [`Schema`] wraps a compiled `jsonschema` validator. The crate is built without its HTTP and
//! file resolvers (workspace `Cargo.toml`), so a schema's `$ref` to a remote document fails to
//! compile instead of making the node do network or disk I/O. An invalid value is reported as
//! [`Invalid`]: the JSON path (a JSON Pointer, `""` = the whole value) of the first failure and
//! why, so the API and CLI can name it.
//!
//! The node scope's schema is [`node_schema`]: `displayName` and `retention` rules; other parts
//! of the node read those settings from [`super::Handle::watch_node_settings`].

use std::sync::Arc;

use serde_json::{json, Value};

/// The scope of the node's own settings.
pub const NODE_SCOPE: &str = "node";

/// Largest settings document of one scope, in bytes of JSON (settings go into every app
/// process's environment, whose size the OS caps).
pub const MAX_SETTINGS_BYTES: usize = 64 * 1024;

/// A value that does not validate: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", if path.is_empty() { "(the whole value)" } else { path.as_str() })]
pub struct Invalid {
    /// JSON Pointer of the failing value (`/retention/0/maxEvents`), `""` for the root.
    pub path: String,
    pub message: String,
}

/// A compiled JSON Schema; cheap to clone.
#[derive(Clone)]
pub struct Schema {
    validator: Option<Arc<jsonschema::Validator>>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.validator.is_some() {
            "Schema(..)"
        } else {
            "Schema(any)"
        })
    }
}

impl Schema {
    /// Accepts every JSON value (an app without `settings-schema`).
    pub fn any() -> Schema {
        Schema { validator: None }
    }

    /// Compiles `schema` (draft 2020-12 unless it says otherwise); fails on an invalid schema
    /// or a reference the node would have to fetch.
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        Ok(Schema {
            validator: Some(Arc::new(validator)),
        })
    }

    /// Checks `value`; the error names the first failing path.
    pub fn validate(&self, value: &Value) -> Result<(), Invalid> {
        if serde_json::to_vec(value).map_or(0, |v| v.len()) > MAX_SETTINGS_BYTES {
            return Err(Invalid {
                path: String::new(),
                message: format!("settings larger than {MAX_SETTINGS_BYTES} bytes"),
            });
        }
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        match validator.iter_errors(value).next() {
            None => Ok(()),
            Some(e) => Err(Invalid {
                path: e.instance_path().to_string(),
                message: e.to_string(),
            }),
        }
    }
}

/// The schema of the node scope (published at `GET /api/v1/settings/node/schema`).
pub fn node_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "shoal node settings",
        "type": "object",
        "properties": {
            "displayName": {"type": "string", "maxLength": 256},
            "retention": {
                "description": "This node's own events matching a rule are pruned, oldest first, beyond its limits.",
                "type": "array",
                "maxItems": 256,
                "items": {
                    "type": "object",
                    "properties": {
                        "semantics": {"type": "string", "minLength": 1},
                        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 64},
                        "maxEvents": {"type": "integer", "minimum": 0},
                        "maxBytes": {"type": "integer", "minimum": 0},
                        "maxAgeSecs": {"type": "integer", "minimum": 0}
                    },
                    "additionalProperties": false,
                    "description": "A rule names at least one limit.",
                    "anyOf": [
                        {"required": ["maxEvents"]},
                        {"required": ["maxBytes"]},
                        {"required": ["maxAgeSecs"]}
                    ]
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failing_path_is_named() {
        let schema = Schema::compile(&node_schema()).unwrap();
        assert!(schema.validate(&json!({})).is_ok());
        assert!(schema
            .validate(&json!({"displayName": "press 4", "retention": [{"maxEvents": 10}]}))
            .is_ok());
        let e = schema
            .validate(&json!({"retention": [{"maxEvents": -1}]}))
            .unwrap_err();
        assert_eq!(e.path, "/retention/0/maxEvents");
        // A rule without a limit would prune nothing: refused, naming the rule.
        let e = schema
            .validate(&json!({"retention": [{"maxEvents": 1}, {"semantics": "s"}]}))
            .unwrap_err();
        assert_eq!(e.path, "/retention/1");
        let e = schema.validate(&json!({"displayName": 3})).unwrap_err();
        assert_eq!(e.path, "/displayName");
        let e = schema.validate(&json!([])).unwrap_err();
        assert_eq!(e.path, "");
    }

    #[test]
    fn remote_references_are_not_fetched() {
        let schema = json!({"$ref": "http://127.0.0.1:9/schema.json"});
        assert!(Schema::compile(&schema).is_err());
    }

    #[test]
    fn no_schema_accepts_anything_but_huge() {
        assert!(Schema::any().validate(&json!([1, "x"])).is_ok());
        let big = Value::String("x".repeat(MAX_SETTINGS_BYTES));
        assert!(Schema::any().validate(&big).is_err());
    }
}
