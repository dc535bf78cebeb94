//! Typed stage parameters: the schema a stage kind declares, and the resolved values.
//!
//! A stage kind lists its parameters as [`ParamSpec`]s. The DAG loader checks every
//! parameter of a DAG file (and every `--set` override) against that list, fills in
//! defaults, and hands the stage a [`Params`] map whose values are known to have the
//! declared type and range.
//!
//! A stage kind declares its parameters once, with [`stage_params!`](crate::stage_params):
//! one line per parameter gives the field of a typed struct and its schema entry, and
//! the generated [`FromParams`] impl turns a [`Params`] map into that struct. Stages
//! use the struct, never string lookups.

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
    /// A list of strings (default: empty).
    Strings,
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
            ParamType::Strings => "list of strings".to_string(),
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
    /// An empty string list.
    NoStrings,
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
            ParamDefault::NoStrings => ParamValue::Strings(Vec::new()),
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
    /// `Some((other, value))`: the parameter matters only when parameter `other` is
    /// the string `value` (`docs` only for `source = "synthetic"`). Otherwise it is
    /// left out of the stage's key, and a `Paths` parameter is not even expanded.
    pub only_if: Option<(&'static str, &'static str)>,
    /// The parameter enters the stage's key only when it differs from its default
    /// (see [`ParamSpec::keyed_unless_default`]).
    pub keyed_unless_default: bool,
}

/// Constructors, one per type, so that a schema entry fits on one line (the name is
/// set by [`stage_params!`](crate::stage_params) from the field name).
impl ParamSpec {
    const fn new(ty: ParamType, default: ParamDefault, doc: &'static str) -> ParamSpec {
        ParamSpec {
            name: "",
            ty,
            default,
            doc,
            only_if: None,
            keyed_unless_default: false,
        }
    }

    /// An integer in `min..=max`, default `default`.
    pub const fn int(min: i64, max: i64, default: i64, doc: &'static str) -> ParamSpec {
        ParamSpec::new(ParamType::Int { min, max }, ParamDefault::Int(default), doc)
    }

    /// A float in `min..=max`, default `default`.
    pub const fn float(min: f64, max: f64, default: f64, doc: &'static str) -> ParamSpec {
        ParamSpec::new(
            ParamType::Float { min, max },
            ParamDefault::Float(default),
            doc,
        )
    }

    /// A boolean, default `default`.
    pub const fn bool(default: bool, doc: &'static str) -> ParamSpec {
        ParamSpec::new(ParamType::Bool, ParamDefault::Bool(default), doc)
    }

    /// A string, default `default`.
    pub const fn string(default: &'static str, doc: &'static str) -> ParamSpec {
        ParamSpec::new(ParamType::Str, ParamDefault::Str(default), doc)
    }

    /// A string the DAG must give.
    pub const fn required_string(doc: &'static str) -> ParamSpec {
        ParamSpec::new(ParamType::Str, ParamDefault::Required, doc)
    }

    /// One of `choices`, default `default`.
    pub const fn choice(
        choices: &'static [&'static str],
        default: &'static str,
        doc: &'static str,
    ) -> ParamSpec {
        ParamSpec::new(ParamType::Choice(choices), ParamDefault::Str(default), doc)
    }

    /// A list of strings, default empty.
    pub const fn strings(doc: &'static str) -> ParamSpec {
        ParamSpec::new(ParamType::Strings, ParamDefault::NoStrings, doc)
    }

    /// External input paths (directories keep files ending in `extensions`), default
    /// none.
    pub const fn paths(extensions: &'static [&'static str], doc: &'static str) -> ParamSpec {
        ParamSpec::new(ParamType::Paths { extensions }, ParamDefault::NoPaths, doc)
    }

    /// This spec named `name`.
    pub const fn named(mut self, name: &'static str) -> ParamSpec {
        self.name = name;
        self
    }

    /// This spec, mattering only when parameter `other` is `value` (see
    /// [`ParamSpec::only_if`]).
    pub const fn only_if(mut self, other: &'static str, value: &'static str) -> ParamSpec {
        self.only_if = Some((other, value));
        self
    }

    /// This spec, left out of the stage's key while it has its default value: for a
    /// parameter added to an existing stage kind whose default reproduces the old
    /// output, so objects built before it existed keep their fingerprints (only a
    /// non-default value gives a new key).
    pub const fn keyed_unless_default(mut self) -> ParamSpec {
        self.keyed_unless_default = true;
        self
    }

    /// Whether the parameter matters for the given values (see [`ParamSpec::only_if`]).
    pub fn applies(&self, params: &Params) -> bool {
        match self.only_if {
            None => true,
            Some((other, value)) => {
                matches!(params.get(other), Some(ParamValue::Str(v)) if v == value)
            }
        }
    }

    /// Whether `value` of this parameter enters the stage's key: it applies (see
    /// [`ParamSpec::applies`]) and, for a [`ParamSpec::keyed_unless_default`]
    /// parameter, differs from the default.
    pub fn in_key(&self, params: &Params, value: &ParamValue) -> bool {
        self.applies(params)
            && !(self.keyed_unless_default && self.default.value().as_ref() == Some(value))
    }
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
    /// A list of strings.
    Strings(Vec<String>),
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
            ParamValue::Strings(v) | ParamValue::Paths(v) => serde_json::Value::from(v.clone()),
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
            (ParamType::Strings, toml::Value::String(v)) => {
                Ok(ParamValue::Strings(vec![v.clone()]))
            }
            (ParamType::Paths { .. } | ParamType::Strings, toml::Value::Array(items)) => {
                let strings = items
                    .iter()
                    .map(|item| match item {
                        toml::Value::String(s) => Ok(s.clone()),
                        other => Err(format!(
                            "expected a list of strings, found {} `{other}` in the list",
                            other.type_str()
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(match ty {
                    ParamType::Strings => ParamValue::Strings(strings),
                    _ => ParamValue::Paths(strings),
                })
            }
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

    /// The value of `name` as a `T` (what [`stage_params!`](crate::stage_params)
    /// generates calls to).
    pub fn field<T: ParamField>(&self, name: &str) -> Result<T, ParamAccessError> {
        self.values
            .get(name)
            .and_then(T::from_value)
            .ok_or_else(|| ParamAccessError {
                name: name.to_string(),
                wanted: T::WANTED,
            })
    }
}

/// A Rust type a parameter value converts to (the field types of a
/// [`stage_params!`](crate::stage_params) struct).
pub trait ParamField: Sized {
    /// What the type is called in [`ParamAccessError`].
    const WANTED: &'static str;
    /// The converted value, or `None` for a value of another type (or out of range).
    fn from_value(value: &ParamValue) -> Option<Self>;
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl ParamField for $t {
            const WANTED: &'static str = concat!("integer fitting ", stringify!($t));
            fn from_value(value: &ParamValue) -> Option<$t> {
                match value {
                    ParamValue::Int(i) => <$t>::try_from(*i).ok(),
                    _ => None,
                }
            }
        }
    )*};
}
int_field!(i64, u64, u32, usize);

impl ParamField for f64 {
    const WANTED: &'static str = "number";
    fn from_value(value: &ParamValue) -> Option<f64> {
        match value {
            ParamValue::Float(f) => Some(*f),
            _ => None,
        }
    }
}

impl ParamField for bool {
    const WANTED: &'static str = "boolean";
    fn from_value(value: &ParamValue) -> Option<bool> {
        match value {
            ParamValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

impl ParamField for String {
    const WANTED: &'static str = "string";
    fn from_value(value: &ParamValue) -> Option<String> {
        match value {
            ParamValue::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl ParamField for Vec<String> {
    const WANTED: &'static str = "list of strings or paths";
    fn from_value(value: &ParamValue) -> Option<Vec<String>> {
        match value {
            ParamValue::Strings(v) | ParamValue::Paths(v) => Some(v.clone()),
            _ => None,
        }
    }
}

/// A stage's typed parameters: built from a validated [`Params`] map. Implemented by
/// [`stage_params!`](crate::stage_params).
pub trait FromParams: Sized {
    /// The schema: one entry per field.
    const SPECS: &'static [ParamSpec];
    /// The typed parameters of `params` (validated against [`FromParams::SPECS`]).
    fn from_params(params: &Params) -> Result<Self, ParamAccessError>;
}

/// Declares a stage's parameters: a struct with one field per parameter, its schema
/// ([`FromParams::SPECS`], the field name is the parameter name) and its
/// [`FromParams`] impl.
///
/// ```
/// ausa_dag::stage_params! {
///     /// Parameters of a windowing stage.
///     pub struct WindowParams {
///         window: u32 = int(1, 1 << 20, 64, "tokens per window"),
///         causal: bool = bool(true, "only earlier windows are visible"),
///         mode: String = choice(&["a", "b"], "a", "which mode").only_if("causal", "x"),
///     }
/// }
/// use ausa_dag::FromParams;
/// assert_eq!(WindowParams::SPECS[0].name, "window");
/// ```
#[macro_export]
macro_rules! stage_params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $field:ident : $ty:ty = $ctor:ident ( $($arg:expr),* $(,)? )
                    $( . $modifier:ident ( $($marg:expr),* ) )*
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $name {
            $( $(#[$fmeta])* #[doc = concat!("Parameter `", stringify!($field), "`.")] pub $field: $ty, )*
        }

        impl $crate::FromParams for $name {
            const SPECS: &'static [$crate::ParamSpec] = &[
                $( $crate::ParamSpec::$ctor($($arg),*).named(stringify!($field)) $( .$modifier($($marg),*) )* ),*
            ];

            fn from_params(params: &$crate::Params) -> Result<Self, $crate::params::ParamAccessError> {
                Ok($name {
                    $( $field: params.field(stringify!($field))?, )*
                })
            }
        }
    };
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
    fn fields_report_type_mismatch() {
        let mut p = Params::default();
        p.set("n", ParamValue::Int(4));
        p.set("neg", ParamValue::Int(-1));
        assert_eq!(p.field::<i64>("n").unwrap(), 4);
        assert_eq!(p.field::<u32>("n").unwrap(), 4);
        let err = p.field::<String>("n").unwrap_err().to_string();
        assert!(err.contains("`n`") && err.contains("string"), "{err}");
        assert!(p.field::<u64>("neg").is_err(), "negative into u64");
        assert!(p.field::<i64>("missing").is_err());
    }

    crate::stage_params! {
        /// Test parameters.
        struct Demo {
            count: usize = int(1, 9, 3, "how many"),
            mode: String = choice(&["a", "b"], "a", "mode"),
            extra: f64 = float(0.0, 1.0, 0.5, "only in mode b").only_if("mode", "b"),
            names: Vec<String> = strings("names"),
        }
    }

    #[test]
    fn stage_params_builds_schema_and_struct() {
        let specs = Demo::SPECS;
        let names: Vec<_> = specs.iter().map(|s| s.name).collect();
        assert_eq!(names, ["count", "mode", "extra", "names"]);
        assert_eq!(specs[0].ty, ParamType::Int { min: 1, max: 9 });
        assert_eq!(specs[2].only_if, Some(("mode", "b")));
        let mut p = Params::default();
        for spec in specs {
            p.set(spec.name, spec.default.value().unwrap());
        }
        let demo = Demo::from_params(&p).unwrap();
        assert_eq!(demo.count, 3);
        assert_eq!(demo.mode, "a");
        assert!(demo.names.is_empty());
        assert!(!specs[2].applies(&p), "extra does not apply in mode a");
        p.set("mode", ParamValue::Str("b".into()));
        assert!(specs[2].applies(&p));
    }

    #[test]
    fn a_keyed_unless_default_parameter_enters_the_key_only_when_changed() {
        let spec = ParamSpec::bool(false, "new switch")
            .named("leading")
            .keyed_unless_default();
        let p = Params::default();
        assert!(
            !spec.in_key(&p, &ParamValue::Bool(false)),
            "default: left out"
        );
        assert!(spec.in_key(&p, &ParamValue::Bool(true)), "changed: keyed");
        let plain = ParamSpec::bool(false, "old switch").named("causal");
        assert!(plain.in_key(&p, &ParamValue::Bool(false)));
    }

    #[test]
    fn strings_accept_one_string_or_a_list() {
        let v = ParamValue::from_toml(&ParamType::Strings, &toml::Value::String("x".into()));
        assert_eq!(v.unwrap(), ParamValue::Strings(vec!["x".into()]));
        let list = toml::Value::Array(vec!["a".into(), toml::Value::Integer(1)]);
        let err = ParamValue::from_toml(&ParamType::Strings, &list).unwrap_err();
        assert!(err.contains("list of strings"), "{err}");
    }
}
