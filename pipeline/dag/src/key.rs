//! Canonical keys and fingerprints.
//!
//! A stage's **key** is a JSON object holding everything its output depends on:
//!
//! ```json
//! {"scheme":"ausa-key/1","kind":"corpus","salt":"1",
//!  "params":{"docs":2000,"seed":0,...},
//!  "inputs":{"documents":"<upstream fingerprint>"},
//!  "external":{"train":[{"blake3":"...","size":123}]}}
//! ```
//!
//! Its **fingerprint** is the blake3 hash of the key's canonical encoding: JSON with
//! object keys sorted bytewise, no whitespace, numbers as serde_json prints them
//! (integers exactly, floats in shortest round-trip form). The encoding is produced
//! here rather than by `serde_json::to_string` so that a dependency turning on
//! serde_json's `preserve_order` can never change a fingerprint.
//!
//! Keys never contain paths, thread counts, hostnames or times.

use serde_json::Value;

/// The version of the key layout; part of every key.
pub const KEY_SCHEME: &str = "ausa-key/1";

/// The canonical encoding of `value` (sorted keys, compact).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The fingerprint of a key: blake3 of its canonical encoding, lowercase hex.
pub fn fingerprint(key: &Value) -> String {
    blake3::hash(canonical_json(key).as_bytes())
        .to_hex()
        .to_string()
}

/// One field that differs between two keys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyChange {
    /// Dotted path of the field (`params.docs`, `inputs.documents`, `external.train[2]`).
    pub field: String,
    /// The old value, `None` when the field is new.
    pub old: Option<String>,
    /// The new value, `None` when the field was removed.
    pub new: Option<String>,
}

/// The field-by-field differences from `old` to `new`, sorted by field.
pub fn diff_keys(old: &Value, new: &Value) -> Vec<KeyChange> {
    let mut changes = Vec::new();
    diff_into(String::new(), Some(old), Some(new), &mut changes);
    changes
}

fn diff_into(path: String, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<KeyChange>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                diff_into(join(k), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                diff_into(format!("{path}[{i}]"), a.get(i), b.get(i), out);
            }
        }
        (a, b) if a != b => out.push(KeyChange {
            field: path,
            old: a.map(canonical_json),
            new: b.map(canonical_json),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 2.5}], "c": "x"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"x","d":[1,{"y":2.5,"z":0}]},"b":1}"#
        );
    }

    #[test]
    fn fingerprint_depends_on_values_not_insertion_order() {
        let a = json!({"x": 1, "y": 2});
        let mut m = serde_json::Map::new();
        m.insert("y".into(), json!(2));
        m.insert("x".into(), json!(1));
        assert_eq!(fingerprint(&a), fingerprint(&Value::Object(m)));
        assert_ne!(fingerprint(&a), fingerprint(&json!({"x": 1, "y": 3})));
        assert_eq!(fingerprint(&a).len(), 64);
    }

    #[test]
    fn diff_reports_each_changed_field() {
        let old = json!({"params": {"docs": 10, "seed": 0}, "external": {"t": [{"b": "1"}]}});
        let new = json!({"params": {"docs": 20, "seed": 0, "new": true}, "external": {"t": []}});
        let d = diff_keys(&old, &new);
        let fields: Vec<_> = d.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["external.t[0]", "params.docs", "params.new"]);
        assert_eq!(d[1].old.as_deref(), Some("10"));
        assert_eq!(d[1].new.as_deref(), Some("20"));
        assert_eq!(d[2].old, None);
    }
}
