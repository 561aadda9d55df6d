//! The loaded model printed back as YAML (what `stack config` prints): block style,
//! keys sorted, strings quoted whenever plain text would read back as anything else.

use serde_json::Value as Json;

use crate::types::Config;
use crate::yaml::{self, Value};

/// `config` as a YAML document that loads back to the same model: every `$` of an
/// interpolated section is written `$$`, so loading the output again gives the same
/// values.
#[must_use]
pub fn to_yaml(config: &Config) -> String {
    // The model serializes into plain JSON types; nothing here can fail.
    let mut json = serde_json::to_value(config).unwrap_or(Json::Null);
    if let Json::Object(top) = &mut json {
        for (key, section) in top.iter_mut() {
            if !key.starts_with("x-") && key != "version" {
                escape_dollars(section);
            }
        }
    }
    let mut out = String::new();
    // The top level in compose's order (version, services, then the objects they
    // use, then extensions); every mapping below it sorted by key.
    if let Json::Object(top) = json {
        let order = [
            "version", "services", "networks", "volumes", "secrets", "configs",
        ];
        let rank = |k: &str| order.iter().position(|o| *o == k).unwrap_or(order.len());
        let mut keys: Vec<(&String, &Json)> = top.iter().collect();
        keys.sort_by_key(|(k, _)| (rank(k), (*k).clone()));
        for (k, v) in keys {
            out.push_str(&scalar_text(k));
            out.push(':');
            after_key(v, 0, &mut out);
        }
    }
    out
}

fn escape_dollars(v: &mut Json) {
    match v {
        Json::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        Json::Array(items) => items.iter_mut().for_each(escape_dollars),
        Json::Object(map) => map.values_mut().for_each(escape_dollars),
        _ => {}
    }
}

fn indent(level: usize, out: &mut String) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

/// Writes a mapping's or sequence's lines at `level`, or a scalar and newline.
fn value(v: &Json, level: usize, out: &mut String) {
    match v {
        Json::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                indent(level, out);
                out.push_str(&scalar_text(k));
                out.push(':');
                after_key(v, level, out);
            }
        }
        Json::Array(items) if !items.is_empty() => {
            for item in items {
                indent(level, out);
                out.push('-');
                match item {
                    Json::Object(map) if !map.is_empty() => {
                        // The first key on the dash's line, the rest aligned under it.
                        let mut first = true;
                        for (k, v) in map {
                            if first {
                                out.push(' ');
                                first = false;
                            } else {
                                indent(level + 1, out);
                            }
                            out.push_str(&scalar_text(k));
                            out.push(':');
                            after_key(v, level + 1, out);
                        }
                    }
                    other => after_key(other, level, out),
                }
            }
        }
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

/// What follows `key:` (or `-`): a nested block on the next lines, or ` scalar`.
fn after_key(v: &Json, level: usize, out: &mut String) {
    match v {
        Json::Object(map) if !map.is_empty() => {
            out.push('\n');
            value(v, level + 1, out);
        }
        Json::Array(items) if !items.is_empty() => {
            out.push('\n');
            value(v, level + 1, out);
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

fn inline(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => n.to_string(),
        Json::String(s) => scalar_text(s),
        Json::Object(_) => "{}".into(),
        Json::Array(_) => "[]".into(),
    }
}

/// A string plain when it reads back as the same string, double-quoted otherwise.
fn scalar_text(s: &str) -> String {
    let safe_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./=+@,:~()$ ".contains(c));
    let plain = !s.is_empty()
        && safe_chars
        && !s.starts_with(['-', ':', ' ', '~', ',', '@'])
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
        && yaml::parse(&format!("k: {s}"))
            .ok()
            .flatten()
            .and_then(|n| n.get("k").map(|v| v.value.clone()))
            == Some(Value::Str(s.to_owned()));
    if plain {
        s.to_owned()
    } else {
        // JSON's escapes are YAML double-quoted escapes.
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_only_when_needed() {
        assert_eq!(scalar_text("nginx:1.2"), "nginx:1.2");
        assert_eq!(scalar_text("node.role == manager"), "node.role == manager");
        assert_eq!(scalar_text("a #b"), "\"a #b\"");
        assert_eq!(scalar_text("true"), "\"true\"");
        assert_eq!(scalar_text("0440"), "\"0440\"");
        assert_eq!(scalar_text("1.5"), "\"1.5\"");
        assert_eq!(scalar_text(""), "\"\"");
        assert_eq!(scalar_text("a: b"), "\"a: b\"");
        assert_eq!(scalar_text("line\nbreak"), "\"line\\nbreak\"");
        assert_eq!(scalar_text("-x"), "\"-x\"");
        assert_eq!(scalar_text("10s"), "10s");
    }
}
