//! Queue payload schemas: JSON Schema (draft 2020-12 by default, or the draft a schema's
//! `$schema` names) checked with the `jsonschema` crate. The stores hold each queue's schema as
//! text and call [`SchemaCheck`] where they decide (enqueue, redrive), so the schema checked is
//! the one stored at that moment, on every node alike; compiled validators are cached here by
//! schema text.
//!
//! Remote references are not resolved (the crate is built without its HTTP and file
//! resolvers): a schema is self-contained, and a server never fetches URLs a client named.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dray_core::{Invalid, Payload};
use dray_store::{PayloadCheck, PayloadSchema};
use jsonschema::Validator;
use serde_json::Value;

/// Compiled validators kept at most; beyond it the cache starts over (a deployment has one
/// schema per queue, so this is only reached when schemas churn).
const COMPILED_MAX: usize = 1024;

/// The server's [`PayloadCheck`]: a cache of compiled validators by schema text.
#[derive(Default)]
pub(crate) struct SchemaCheck {
    compiled: Mutex<HashMap<PayloadSchema, Arc<Validator>>>,
}

impl std::fmt::Debug for SchemaCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let compiled = self.compiled.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("SchemaCheck").field("compiled", &compiled).finish()
    }
}

impl SchemaCheck {
    /// Checks that `schema` is a JSON Schema this server can apply, for `PUT /v1/queues/{name}`;
    /// returns its text as stored. The error names `payload_schema` and says what is wrong.
    pub(crate) fn accept(schema: &Value) -> Result<PayloadSchema, Invalid> {
        if !matches!(schema, Value::Object(_) | Value::Bool(_)) {
            return Err(Invalid::new("payload_schema", "must be a JSON Schema: an object or a boolean"));
        }
        compile(schema).map_err(|message| Invalid::new("payload_schema", message))?;
        let text = serde_json::to_string(schema).expect("a JSON value serializes");
        Ok(PayloadSchema::new(text))
    }

    fn validator(&self, schema: &PayloadSchema) -> Result<Arc<Validator>, String> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = compiled.get(schema) {
            return Ok(v.clone());
        }
        let value: Value = serde_json::from_str(schema.as_str())
            .map_err(|e| format!("the queue's payload_schema is not JSON ({e}); set it again"))?;
        let validator = Arc::new(compile(&value)?);
        if compiled.len() >= COMPILED_MAX {
            compiled.clear();
        }
        compiled.insert(schema.clone(), validator.clone());
        Ok(validator)
    }
}

impl PayloadCheck for SchemaCheck {
    fn check(&self, schema: &PayloadSchema, payload: &Payload) -> Result<(), String> {
        let validator = self.validator(schema)?;
        let value: Value = serde_json::from_slice(payload.as_bytes())
            .map_err(|e| format!("is not JSON, so it cannot match the queue's payload_schema ({e})"))?;
        match validator.iter_errors(&value).next() {
            None => Ok(()),
            Some(error) => {
                let at = error.instance_path().to_string();
                let at = if at.is_empty() { "the top level".to_owned() } else { format!("{at:?}") };
                Err(format!(
                    "does not match the queue's payload_schema at {at}: {error} (schema keyword at {:?})",
                    error.schema_path().to_string()
                ))
            }
        }
    }
}

fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| {
        let at = e.instance_path().to_string();
        if at.is_empty() {
            format!("is not a valid JSON Schema: {e}")
        } else {
            format!("is not a valid JSON Schema at {at:?}: {e}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> PayloadSchema {
        SchemaCheck::accept(&json!({
            "type": "object",
            "required": ["amount"],
            "properties": {"amount": {"type": "integer", "minimum": 1}, "tags": {"type": "array", "items": {"type": "string"}}}
        }))
        .unwrap()
    }

    fn check(payload: Value) -> Result<(), String> {
        SchemaCheck::default().check(&schema(), &Payload::new(serde_json::to_vec(&payload).unwrap()))
    }

    #[test]
    fn a_matching_payload_passes_and_a_failing_one_names_the_pointer() {
        assert_eq!(check(json!({"amount": 3, "tags": ["a"]})), Ok(()));
        let e = check(json!({"amount": 3, "tags": ["a", 7]})).unwrap_err();
        assert!(e.contains(r#"at "/tags/1""#), "{e}");
        assert!(e.contains("/properties/tags/items/type"), "{e}");
        let e = check(json!({"amount": 0})).unwrap_err();
        assert!(e.contains(r#"at "/amount""#) && e.contains("minimum"), "{e}");
        let e = check(json!({"tags": []})).unwrap_err();
        assert!(e.contains("at the top level") && e.contains("amount"), "{e}");
    }

    #[test]
    fn schemas_that_cannot_apply_are_refused_naming_the_field() {
        for bad in [json!(3), json!("string"), json!({"type": "no-such-type"}), json!({"minimum": "one"})] {
            let e = SchemaCheck::accept(&bad).unwrap_err();
            assert_eq!(e.field, "payload_schema", "{bad}");
        }
        assert!(SchemaCheck::accept(&json!(true)).is_ok());
        // A reference to a remote document is not fetched: the schema must be self-contained.
        let e = SchemaCheck::accept(&json!({"$ref": "https://example.com/schema.json"})).unwrap_err();
        assert_eq!(e.field, "payload_schema");
    }

    #[test]
    fn validators_are_compiled_once_per_schema_text() {
        let check = SchemaCheck::default();
        let s = schema();
        let p = Payload::new(&br#"{"amount": 1}"#[..]);
        for _ in 0..3 {
            check.check(&s, &p).unwrap();
        }
        assert_eq!(check.compiled.lock().unwrap().len(), 1);
    }
}
