//! Variable interpolation, as docker's `cli/compose/template`: `$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`, `${VAR?message}` and `$$`,
//! applied to every string value of the generic tree (keys are left alone), then the
//! values at the paths docker casts (`deploy.replicas`, `ports[].published`, ...)
//! typed back to integers, booleans and numbers.

use std::collections::BTreeMap;

use crate::yaml::{Node, Value};

/// The variables interpolation reads (docker reads the CLI's environment only).
pub type Environment = BTreeMap<String, String>;

/// Why a template cannot be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// A `$` that starts no variable (`$1`, `${}`, a trailing `$`).
    Invalid,
    /// `${VAR:?message}` or `${VAR?message}` with the variable missing.
    Required {
        /// The variable.
        name: String,
        /// The file's message.
        message: String,
    },
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Substitutes the variables of `template` from `env`.
///
/// # Errors
/// [`TemplateError::Invalid`] for a `$` that starts no variable,
/// [`TemplateError::Required`] for a missing required variable.
pub fn substitute(template: &str, env: &Environment) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some(c) if is_name_start(c) => {
                let end = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
                if let Some(value) = env.get(&after[..end]) {
                    out.push_str(value);
                }
                rest = &after[end..];
            }
            Some('{') => {
                let body_and_rest = &after[1..];
                let close = body_and_rest.find('}').ok_or(TemplateError::Invalid)?;
                out.push_str(&braced(&body_and_rest[..close], env)?);
                rest = &body_and_rest[close + 1..];
            }
            _ => return Err(TemplateError::Invalid),
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of `${body}`.
fn braced(body: &str, env: &Environment) -> Result<String, TemplateError> {
    if !body.starts_with(is_name_start) {
        return Err(TemplateError::Invalid);
    }
    let end = body.find(|c| !is_name_char(c)).unwrap_or(body.len());
    let (name, op) = body.split_at(end);
    let value = env.get(name);
    let set_and_non_empty = value.is_some_and(|v| !v.is_empty());
    let (kind, empty_counts, arg) = if let Some(arg) = op.strip_prefix(":-") {
        ('-', true, arg)
    } else if let Some(arg) = op.strip_prefix(":?") {
        ('?', true, arg)
    } else if let Some(arg) = op.strip_prefix('-') {
        ('-', false, arg)
    } else if let Some(arg) = op.strip_prefix('?') {
        ('?', false, arg)
    } else if op.is_empty() {
        return Ok(value.cloned().unwrap_or_default());
    } else {
        return Err(TemplateError::Invalid);
    };
    let missing = if empty_counts {
        !set_and_non_empty
    } else {
        value.is_none()
    };
    match (missing, kind) {
        (false, _) => Ok(value.cloned().unwrap_or_default()),
        (true, '-') => Ok(arg.to_owned()),
        (true, _) => Err(TemplateError::Required {
            name: name.to_owned(),
            message: arg.to_owned(),
        }),
    }
}

/// What a string at a cast path becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cast {
    Int,
    Bool,
    Float,
}

/// A path pattern: `*` matches any key or index.
const SERVICE_CASTS: &[(&[&str], Cast)] = &[
    (&["configs", "*", "mode"], Cast::Int),
    (&["secrets", "*", "mode"], Cast::Int),
    (&["healthcheck", "retries"], Cast::Int),
    (&["healthcheck", "disable"], Cast::Bool),
    (&["deploy", "replicas"], Cast::Int),
    (&["deploy", "update_config", "parallelism"], Cast::Int),
    (
        &["deploy", "update_config", "max_failure_ratio"],
        Cast::Float,
    ),
    (&["deploy", "rollback_config", "parallelism"], Cast::Int),
    (
        &["deploy", "rollback_config", "max_failure_ratio"],
        Cast::Float,
    ),
    (&["deploy", "restart_policy", "max_attempts"], Cast::Int),
    (&["deploy", "placement", "max_replicas_per_node"], Cast::Int),
    (&["ports", "*", "target"], Cast::Int),
    (&["ports", "*", "published"], Cast::Int),
    (&["ulimits", "*"], Cast::Int),
    (&["ulimits", "*", "hard"], Cast::Int),
    (&["ulimits", "*", "soft"], Cast::Int),
    (&["privileged"], Cast::Bool),
    (&["read_only"], Cast::Bool),
    (&["stdin_open"], Cast::Bool),
    (&["tty"], Cast::Bool),
    (&["init"], Cast::Bool),
    (&["volumes", "*", "read_only"], Cast::Bool),
    (&["volumes", "*", "volume", "nocopy"], Cast::Bool),
];

const TOP_CASTS: &[(&[&str], Cast)] = &[
    (&["networks", "*", "external"], Cast::Bool),
    (&["networks", "*", "internal"], Cast::Bool),
    (&["networks", "*", "attachable"], Cast::Bool),
    (&["volumes", "*", "external"], Cast::Bool),
    (&["secrets", "*", "external"], Cast::Bool),
    (&["configs", "*", "external"], Cast::Bool),
];

/// The cast for a path (`services.web.deploy.replicas` as segments), if any.
pub(crate) fn cast_for(path: &[String]) -> Option<Cast> {
    let matches = |pattern: &[&str], path: &[String]| {
        pattern.len() == path.len() && pattern.iter().zip(path).all(|(p, s)| *p == "*" || p == s)
    };
    if path.len() > 2 && path[0] == "services" {
        let rest = &path[2..];
        return SERVICE_CASTS
            .iter()
            .find(|(p, _)| matches(p, rest))
            .map(|(_, c)| *c);
    }
    TOP_CASTS
        .iter()
        .find(|(p, _)| matches(p, path))
        .map(|(_, c)| *c)
}

/// Casts a substituted string (docker's `toInt`, `toBoolean`, `toFloat`).
pub(crate) fn cast(text: &str, cast: Cast) -> Option<Value> {
    match cast {
        Cast::Int => text.trim().parse::<i64>().ok().map(Value::Int),
        Cast::Float => text.trim().parse::<f64>().ok().map(Value::Float),
        Cast::Bool => match text.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" | "true" | "on" => Some(Value::Bool(true)),
            "n" | "no" | "false" | "off" => Some(Value::Bool(false)),
            _ => None,
        },
    }
}

/// Why interpolating the tree failed: where, and docker's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    /// The key path (`services.web.image`).
    pub path: String,
    /// The line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Interpolates every string of `node` (the tree at `path`) and casts the values at the
/// cast paths.
///
/// # Errors
/// The first invalid template, missing required variable or uncastable value.
pub fn interpolate(
    node: &mut Node,
    path: &mut Vec<String>,
    env: &Environment,
) -> Result<(), InterpolationError> {
    match &mut node.value {
        Value::Map(entries) => {
            for entry in entries {
                path.push(entry.key.clone());
                interpolate(&mut entry.value, path, env)?;
                path.pop();
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                interpolate(item, path, env)?;
                path.pop();
            }
        }
        Value::Str(text) => {
            let error = |message: String| InterpolationError {
                path: crate::display_path(path),
                line: node.line,
                message,
            };
            let substituted = substitute(text, env).map_err(|e| {
                error(match e {
                    TemplateError::Invalid => format!(
                        "invalid interpolation format: {text:?}; you may need to escape any $ with another $"
                    ),
                    TemplateError::Required { name, message } => {
                        format!("required variable {name} is missing a value: {message}")
                    }
                })
            })?;
            match cast_for(path) {
                Some(kind) => {
                    node.value = cast(&substituted, kind).ok_or_else(|| {
                        error(
                            match kind {
                                Cast::Int => "must be an integer",
                                Cast::Bool => "must be a boolean",
                                Cast::Float => "must be a number",
                            }
                            .into(),
                        )
                    })?;
                }
                None => *text = substituted,
            }
        }
        Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        [("TAG", "1.2"), ("EMPTY", ""), ("N", "3"), ("_x1", "y")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn sub(t: &str) -> Result<String, TemplateError> {
        substitute(t, &env())
    }

    #[test]
    fn every_form_substitutes_as_docker_does() {
        assert_eq!(sub("nginx:$TAG").unwrap(), "nginx:1.2");
        assert_eq!(sub("nginx:${TAG}-x").unwrap(), "nginx:1.2-x");
        assert_eq!(sub("$_x1.$TAG").unwrap(), "y.1.2");
        assert_eq!(sub("${UNSET}|$UNSET|").unwrap(), "||");
        assert_eq!(sub("${UNSET:-d}").unwrap(), "d");
        assert_eq!(sub("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(sub("${EMPTY-d}").unwrap(), "");
        assert_eq!(sub("${UNSET-d e}").unwrap(), "d e");
        assert_eq!(sub("${TAG:-d}").unwrap(), "1.2");
        assert_eq!(sub("${TAG:?no}").unwrap(), "1.2");
        assert_eq!(sub("${EMPTY?no}").unwrap(), "");
        assert_eq!(sub("$$TAG costs $$5").unwrap(), "$TAG costs $5");
        assert_eq!(sub("no vars").unwrap(), "no vars");
    }

    #[test]
    fn required_and_invalid_templates_fail() {
        assert_eq!(
            sub("${TAG2:?set it}"),
            Err(TemplateError::Required {
                name: "TAG2".into(),
                message: "set it".into()
            })
        );
        assert!(matches!(
            sub("${EMPTY:?}"),
            Err(TemplateError::Required { .. })
        ));
        assert!(matches!(
            sub("${UNSET?x}"),
            Err(TemplateError::Required { .. })
        ));
        for bad in ["$", "a $1", "${}", "${TAG", "${1A}", "${TAG:x}", "$ x"] {
            assert_eq!(sub(bad), Err(TemplateError::Invalid), "{bad}");
        }
    }

    #[test]
    fn casts_follow_docker_paths_and_words() {
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            cast_for(&p("services.web.deploy.replicas")),
            Some(Cast::Int)
        );
        assert_eq!(
            cast_for(&p("services.web.ports.0.published")),
            Some(Cast::Int)
        );
        assert_eq!(cast_for(&p("networks.front.external")), Some(Cast::Bool));
        assert_eq!(cast_for(&p("services.web.image")), None);
        assert_eq!(cast("yes", Cast::Bool), Some(Value::Bool(true)));
        assert_eq!(cast("Off", Cast::Bool), Some(Value::Bool(false)));
        assert_eq!(cast("0.5", Cast::Float), Some(Value::Float(0.5)));
        assert_eq!(cast("x", Cast::Int), None);
    }
}
