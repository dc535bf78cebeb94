//! Typed stage parameters: the schema a stage kind declares, and the resolved values.
//!
//! A stage kind lists its parameters as [`ParamSpec`]s. The DAG loader checks every
//! parameter of a DAG file (and every `--set` override) against that list, fills in
//! defaults, and hands the stage a [`Params`] map whose values are known to have the
//! declared type and range. Stages read them with the typed getters.

use std::collections::BTreeMap;
use std::fmt;

/// The type (and accepted range) of one stage parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamType {
    /// A signed integer in `min..=max`.
    Int {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A finite float in `min..=max`.
    Float {
        /// Smallest accepted value.
        min: f64,
        /// Largest accepted value.
        max: f64,
    },
    /// `true` or `false`.
    Bool,
    /// Any string.
    Str,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// A list of files, directories or glob patterns naming **external inputs**.
    ///
    /// The planner expands them to files (directories recursively, keeping only the
    /// given extensions), and the fingerprint records the files' content digests,
    /// never the paths.
    Paths {
        /// File extensions (without dot) kept when a directory is walked.
        extensions: &'static [&'static str],
    },
}

impl ParamType {
    /// A short human description of the type, used in error messages and `ausa show`.
    pub fn describe(&self) -> String {
        match self {
            ParamType::Int { min, max } => format!("integer in {min}..={max}"),
            ParamType::Float { min, max } => format!("number in {min}..={max}"),
            ParamType::Bool => "boolean".to_string(),
            ParamType::Str => "string".to_string(),
            ParamType::Choice(choices) => format!("one of {}", choices.join(", ")),
            ParamType::Paths { .. } => "list of files, directories or globs".to_string(),
        }
    }
}

/// The default of a parameter, as written in a stage's schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamDefault {
    /// The parameter must be given.
    Required,
    /// An integer default.
    Int(i64),
    /// A float default.
    Float(f64),
    /// A boolean default.
    Bool(bool),
    /// A string (or choice) default.
    Str(&'static str),
    /// An empty path list.
    NoPaths,
}

impl ParamDefault {
    /// The default as a value, or `None` for [`ParamDefault::Required`].
    pub fn value(&self) -> Option<ParamValue> {
        Some(match *self {
            ParamDefault::Required => return None,
            ParamDefault::Int(v) => ParamValue::Int(v),
            ParamDefault::Float(v) => ParamValue::Float(v),
            ParamDefault::Bool(v) => ParamValue::Bool(v),
            ParamDefault::Str(v) => ParamValue::Str(v.to_string()),
            ParamDefault::NoPaths => ParamValue::Paths(Vec::new()),
        })
    }
}

/// One parameter a stage kind accepts.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// The key in the DAG file (`[stages.X] name = ...`) and in `--set X.name=...`.
    pub name: &'static str,
    /// Type and range.
    pub ty: ParamType,
    /// Default filled in when the DAG does not give the parameter.
    pub default: ParamDefault,
    /// One line shown by `ausa show`.
    pub doc: &'static str,
}

/// A resolved parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// An integer.
    Int(i64),
    /// A finite float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string or a choice.
    Str(String),
    /// External input paths, as written (relative ones are resolved by the planner).
    Paths(Vec<String>),
}

impl ParamValue {
    /// The value as JSON, as it appears in canonical keys and `--json` output.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ParamValue::Int(v) => serde_json::Value::from(*v),
            ParamValue::Float(v) => serde_json::Value::from(*v),
            ParamValue::Bool(v) => serde_json::Value::from(*v),
            ParamValue::Str(v) => serde_json::Value::from(v.as_str()),
            ParamValue::Paths(v) => serde_json::Value::from(v.clone()),
        }
    }

    /// Checks a raw TOML value against `ty` and converts it.
    ///
    /// The error is a sentence fragment naming what was expected, for the caller to
    /// prefix with the file, line and key.
    pub fn from_toml(ty: &ParamType, raw: &toml::Value) -> Result<ParamValue, String> {
        let found = || format!("found {} `{raw}`", raw.type_str());
        match (ty, raw) {
            (ParamType::Int { min, max }, toml::Value::Integer(v)) => {
                if v < min || v > max {
                    Err(format!(
                        "{v} is out of range: expected an integer in {min}..={max}"
                    ))
                } else {
                    Ok(ParamValue::Int(*v))
                }
            }
            (ParamType::Float { min, max }, toml::Value::Float(_) | toml::Value::Integer(_)) => {
                let v = match raw {
                    toml::Value::Float(f) => *f,
                    toml::Value::Integer(i) => *i as f64,
                    _ => unreachable!("matched above"),
                };
                if !v.is_finite() || v < *min || v > *max {
                    Err(format!(
                        "{v} is out of range: expected a number in {min}..={max}"
                    ))
                } else {
                    Ok(ParamValue::Float(v))
                }
            }
            (ParamType::Bool, toml::Value::Boolean(v)) => Ok(ParamValue::Bool(*v)),
            (ParamType::Str, toml::Value::String(v)) => Ok(ParamValue::Str(v.clone())),
            (ParamType::Choice(choices), toml::Value::String(v)) => {
                if choices.contains(&v.as_str()) {
                    Ok(ParamValue::Str(v.clone()))
                } else {
                    Err(format!(
                        "`{v}` is not a valid choice; valid choices: {}",
                        choices.join(", ")
                    ))
                }
            }
            (ParamType::Paths { .. }, toml::Value::String(v)) => {
                Ok(ParamValue::Paths(vec![v.clone()]))
            }
            (ParamType::Paths { .. }, toml::Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "expected a list of path strings, found {} `{other}` in the list",
                        other.type_str()
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(ParamValue::Paths),
            (ty, _) => Err(format!("expected {}, {}", ty.describe(), found())),
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// The resolved parameters of one stage: every declared parameter, defaults filled in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    values: BTreeMap<String, ParamValue>,
}

/// A parameter was read with the wrong getter or is absent: a bug in a stage, reported
/// as an error rather than a panic.
#[derive(Debug, thiserror::Error)]
#[error("stage parameter `{name}` is missing or not a {wanted} (stage schema and code disagree)")]
pub struct ParamAccessError {
    name: String,
    wanted: &'static str,
}

impl Params {
    /// Builds a parameter map from already validated values.
    pub fn from_values(values: BTreeMap<String, ParamValue>) -> Params {
        Params { values }
    }

    /// Iterates over `(name, value)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ParamValue)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `name`, if declared.
    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.values.get(name)
    }

    pub(crate) fn set(&mut self, name: &str, value: ParamValue) {
        self.values.insert(name.to_string(), value);
    }

    fn typed<'a, T>(
        &'a self,
        name: &str,
        wanted: &'static str,
        pick: impl FnOnce(&'a ParamValue) -> Option<T>,
    ) -> Result<T, ParamAccessError> {
        self.values
            .get(name)
            .and_then(pick)
            .ok_or_else(|| ParamAccessError {
                name: name.to_string(),
                wanted,
            })
    }

    /// An integer parameter.
    pub fn int(&self, name: &str) -> Result<i64, ParamAccessError> {
        self.typed(name, "integer", |v| match v {
            ParamValue::Int(i) => Some(*i),
            _ => None,
        })
    }

    /// A float parameter.
    pub fn float(&self, name: &str) -> Result<f64, ParamAccessError> {
        self.typed(name, "float", |v| match v {
            ParamValue::Float(f) => Some(*f),
            _ => None,
        })
    }

    /// A boolean parameter.
    pub fn bool(&self, name: &str) -> Result<bool, ParamAccessError> {
        self.typed(name, "boolean", |v| match v {
            ParamValue::Bool(b) => Some(*b),
            _ => None,
        })
    }

    /// A string or choice parameter.
    pub fn str(&self, name: &str) -> Result<&str, ParamAccessError> {
        self.typed(name, "string", |v| match v {
            ParamValue::Str(s) => Some(s.as_str()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_range_is_enforced() {
        let ty = ParamType::Int { min: 1, max: 10 };
        assert_eq!(
            ParamValue::from_toml(&ty, &toml::Value::Integer(3)).unwrap(),
            ParamValue::Int(3)
        );
        let err = ParamValue::from_toml(&ty, &toml::Value::Integer(11)).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        let err = ParamValue::from_toml(&ty, &toml::Value::String("x".into())).unwrap_err();
        assert!(err.contains("expected integer"), "{err}");
    }

    #[test]
    fn choice_lists_valid_values() {
        let ty = ParamType::Choice(&["a", "b"]);
        let err = ParamValue::from_toml(&ty, &toml::Value::String("c".into())).unwrap_err();
        assert!(err.contains("valid choices: a, b"), "{err}");
    }

    #[test]
    fn float_accepts_integers_and_rejects_nan() {
        let ty = ParamType::Float { min: 0.0, max: 1.0 };
        assert_eq!(
            ParamValue::from_toml(&ty, &toml::Value::Integer(1)).unwrap(),
            ParamValue::Float(1.0)
        );
        assert!(ParamValue::from_toml(&ty, &toml::Value::Float(f64::NAN)).is_err());
    }

    #[test]
    fn getters_report_type_mismatch() {
        let mut p = Params::default();
        p.set("n", ParamValue::Int(4));
        assert_eq!(p.int("n").unwrap(), 4);
        assert!(p.str("n").is_err());
        assert!(p.int("missing").is_err());
    }
}
