//! Job parameters: what a job declares (`"params"` in its file), how the
//! values given at `job start --param k=v` are checked against it, and how
//! a step sees them (`MUSTER_PARAM_<NAME>`).
//!
//! The master resolves a start's values once ([`resolve`]: unknown names,
//! missing required ones, wrong types refused, defaults filled in) and the
//! start entry carries the result. Scheduled runs are fired by the target,
//! with the defaults ([`defaults`]); a job whose schedule would need a
//! value nobody gives (required, no default) is refused when it is defined.
//!
//! Names are ASCII letters, digits and `_`, not starting with a digit, so
//! `MUSTER_PARAM_` plus the name upper-cased is a valid variable name; two
//! names that upper-case alike are refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Prefix of the variable a step gets each parameter in.
pub const ENV_PREFIX: &str = "MUSTER_PARAM_";

/// What a run record shows instead of a secret's value.
pub const MASK: &str = "***";

/// Longest parameter name.
pub const MAX_NAME_LEN: usize = 64;

/// Longest value of one parameter, in bytes.
pub const MAX_VALUE_LEN: usize = 4096;

/// Values by parameter name, as given or resolved.
pub type Values = BTreeMap<String, String>;

/// A parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ParamType {
    String,
    Int,
    Bool,
    Choice,
    Secret,
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// With `type: choice`: the values allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A refused declaration or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error(
        "'{0}' is not a parameter name: use ASCII letters, digits and '_', not starting with a digit, at most {MAX_NAME_LEN}"
    )]
    BadName(String),
    #[error("'{name}' and '{other}' would both be {ENV_PREFIX}{upper}")]
    SameVariable { name: String, other: String, upper: String },
    #[error("parameter '{0}' of type choice needs \"values\"")]
    NoValues(String),
    #[error("parameter '{0}': \"values\" go only with type choice")]
    ValuesNotChoice(String),
    #[error("parameter '{0}' is secret: a default would be stored in the job's record; give it at start")]
    SecretDefault(String),
    #[error("parameter '{name}': {message}")]
    BadValue { name: String, message: String },
    #[error("parameter '{name}' is required (give --param {name}=VALUE)")]
    Missing { name: String },
    #[error("the job has no parameter '{name}' (its parameters: {known})")]
    Unknown { name: String, known: String },
    #[error("parameter '{name}' is required and has no default, so schedule '{schedule}' could not run it; give it a default")]
    ScheduleNeedsValue { name: String, schedule: String },
}

impl Param {
    /// The variable a step gets it in.
    pub fn env_var(&self) -> String {
        env_var(&self.name)
    }

    /// Checks one value against the type.
    ///
    /// # Errors
    /// [`ParamError::BadValue`], saying what was expected.
    pub fn check(&self, value: &str) -> Result<(), ParamError> {
        let bad = |message: String| Err(ParamError::BadValue { name: self.name.clone(), message });
        if value.len() > MAX_VALUE_LEN {
            return bad(format!("the value is {} bytes; the limit is {MAX_VALUE_LEN}", value.len()));
        }
        if value.contains('\0') {
            return bad("the value contains NUL".into());
        }
        match self.kind {
            ParamType::String | ParamType::Secret => Ok(()),
            ParamType::Int => match value.parse::<i64>() {
                Ok(_) => Ok(()),
                Err(_) => bad(format!("'{value}' is not an int")),
            },
            ParamType::Bool => match value {
                "true" | "false" => Ok(()),
                _ => bad(format!("'{value}' is not a bool (true or false)")),
            },
            ParamType::Choice if self.values.iter().any(|v| v == value) => Ok(()),
            ParamType::Choice => bad(format!("'{value}' is not one of {}", self.values.join(", "))),
        }
    }
}

/// `MUSTER_PARAM_` and the name upper-cased.
pub fn env_var(name: &str) -> String {
    format!("{ENV_PREFIX}{}", name.to_ascii_uppercase())
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME_LEN
}

/// Checks a job's declarations: names, types, defaults.
///
/// # Errors
/// The first problem, with the index of the parameter it is in.
pub fn validate(params: &[Param]) -> Result<(), (usize, ParamError)> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (i, p) in params.iter().enumerate() {
        let fail = |e| Err((i, e));
        if !valid_name(&p.name) {
            return fail(ParamError::BadName(p.name.clone()));
        }
        let upper = p.name.to_ascii_uppercase();
        if let Some(other) = seen.insert(upper.clone(), &p.name) {
            return fail(ParamError::SameVariable { name: p.name.clone(), other: other.to_owned(), upper });
        }
        match (p.kind, p.values.is_empty()) {
            (ParamType::Choice, true) => return fail(ParamError::NoValues(p.name.clone())),
            (ParamType::Choice, false) | (_, true) => {}
            (_, false) => return fail(ParamError::ValuesNotChoice(p.name.clone())),
        }
        if p.kind == ParamType::Secret && p.default.is_some() {
            return fail(ParamError::SecretDefault(p.name.clone()));
        }
        if let Some(d) = &p.default {
            p.check(d).map_err(|e| (i, e))?;
        }
    }
    Ok(())
}

/// The values a start runs with: the given ones checked, defaults filled
/// in. A parameter with neither a value nor a default is left out (its
/// variable is not set) unless it is required.
///
/// # Errors
/// An unknown name, a value of the wrong type, a required one missing.
pub fn resolve(params: &[Param], given: &Values) -> Result<Values, ParamError> {
    if let Some(name) = given.keys().find(|k| !params.iter().any(|p| &p.name == *k)) {
        let known = if params.is_empty() {
            "none".to_owned()
        } else {
            params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
        };
        return Err(ParamError::Unknown { name: name.clone(), known });
    }
    let mut out = Values::new();
    for p in params {
        match given.get(&p.name).or(p.default.as_ref()) {
            Some(v) => {
                p.check(v)?;
                out.insert(p.name.clone(), v.clone());
            }
            None if p.required => return Err(ParamError::Missing { name: p.name.clone() }),
            None => {}
        }
    }
    Ok(out)
}

/// The values a scheduled run uses: the defaults.
pub fn defaults(params: &[Param]) -> Values {
    params.iter().filter_map(|p| Some((p.name.clone(), p.default.clone()?))).collect()
}

/// `values` with every secret's value replaced by [`MASK`]: what a run
/// record shows.
pub fn masked(params: &[Param], values: &Values) -> Values {
    values
        .iter()
        .map(|(k, v)| {
            let secret = params.iter().any(|p| &p.name == k && p.kind == ParamType::Secret);
            (k.clone(), if secret { MASK.to_owned() } else { v.clone() })
        })
        .collect()
}

/// The step's variables for `values`: `MUSTER_PARAM_<NAME>` each.
pub fn env(values: &Values) -> impl Iterator<Item = (String, String)> + '_ {
    values.iter().map(|(k, v)| (env_var(k), v.clone()))
}

/// Parses one `--param k=v`.
///
/// # Errors
/// When there is no `=` or the name is empty.
pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{text}' is not NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue_params() -> Vec<Param> {
        serde_json::from_str(
            r#"[{"name": "who", "type": "string", "required": true}, {"name": "token", "type": "secret"},
                {"name": "mode", "type": "choice", "values": ["a", "b"], "default": "a"}, {"name": "n", "type": "int"},
                {"name": "dry", "type": "bool", "default": "false"}]"#,
        )
        .unwrap()
    }

    fn given(pairs: &[(&str, &str)]) -> Values {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_issue_example_validates() {
        validate(&issue_params()).unwrap();
    }

    #[test]
    fn resolve_fills_defaults_and_checks_types() {
        let p = issue_params();
        let got = resolve(&p, &given(&[("who", "world"), ("n", "-3")])).unwrap();
        assert_eq!(got, given(&[("who", "world"), ("mode", "a"), ("n", "-3"), ("dry", "false")]));
        assert_eq!(resolve(&p, &given(&[])), Err(ParamError::Missing { name: "who".into() }));
        assert!(
            matches!(resolve(&p, &given(&[("who", "w"), ("mode", "c")])), Err(ParamError::BadValue { name, .. }) if name == "mode")
        );
        assert!(
            matches!(resolve(&p, &given(&[("who", "w"), ("n", "1.5")])), Err(ParamError::BadValue { name, .. }) if name == "n")
        );
        assert!(
            matches!(resolve(&p, &given(&[("who", "w"), ("dry", "yes")])), Err(ParamError::BadValue { name, .. }) if name == "dry")
        );
        assert!(
            matches!(resolve(&p, &given(&[("who", "w"), ("whom", "x")])), Err(ParamError::Unknown { name, .. }) if name == "whom")
        );
    }

    #[test]
    fn secrets_are_masked_and_have_no_default() {
        let p = issue_params();
        let values = given(&[("who", "world"), ("token", "s3cret")]);
        assert_eq!(masked(&p, &values), given(&[("who", "world"), ("token", MASK)]));
        let bad: Vec<Param> = serde_json::from_str(r#"[{"name": "t", "type": "secret", "default": "x"}]"#).unwrap();
        assert_eq!(validate(&bad), Err((0, ParamError::SecretDefault("t".into()))));
    }

    #[test]
    fn names_make_valid_distinct_variables() {
        let p = |name: &str| Param { name: name.into(), kind: ParamType::String, values: vec![], default: None, required: false };
        for bad in ["", "1a", "a-b", "a b", "é", &"a".repeat(MAX_NAME_LEN + 1)] {
            assert!(matches!(validate(&[p(bad)]), Err((0, ParamError::BadName(_)))), "{bad:?}");
        }
        assert!(matches!(validate(&[p("who"), p("WHO")]), Err((1, ParamError::SameVariable { .. }))));
        assert_eq!(p("who_2").env_var(), "MUSTER_PARAM_WHO_2");
        validate(&[p("_x"), p("a1")]).unwrap();
    }

    #[test]
    fn choice_needs_values_and_defaults_are_checked() {
        let bad: Vec<Param> = serde_json::from_str(r#"[{"name": "m", "type": "choice"}]"#).unwrap();
        assert_eq!(validate(&bad), Err((0, ParamError::NoValues("m".into()))));
        let bad: Vec<Param> = serde_json::from_str(r#"[{"name": "m", "type": "int", "default": "x"}]"#).unwrap();
        assert!(matches!(validate(&bad), Err((0, ParamError::BadValue { .. }))));
    }
}
