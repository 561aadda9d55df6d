//! YAML 1.2 text to a generic tree whose nodes know their line, as Go's `yaml.v3`
//! gives docker's loader a `map[string]any`.
//!
//! The events come from `saphyr-parser` (pure Rust, YAML 1.2); this module builds the
//! tree without recursion, resolves plain scalars with the core schema (plus Go's
//! `0`-prefixed octal integers, which real stacks use for `mode: 0440`), expands
//! aliases (bounded, so no "billion laughs") and applies merge keys (`<<: *x`, explicit
//! keys win, then the merged mappings in order). Only the first document is read.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Tag};

/// How deep collections may nest: far beyond any compose file, and low enough that
/// the recursive passes over the tree cannot exhaust the stack.
const MAX_DEPTH: usize = 64;
/// How many nodes a document may expand to, aliases included.
const MAX_NODES: usize = 200_000;

/// A node of the generic tree, with the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// The line of the file the node starts on (1-based).
    pub line: usize,
}

/// A generic YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in the file's order; keys are scalars' text.
    Map(Vec<Entry>),
}

/// One key of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key's text.
    pub key: String,
    /// The line of the key.
    pub line: usize,
    /// The value.
    pub value: Node,
}

impl Node {
    /// The entries, if the node is a mapping.
    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value of `key`, if the node is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    /// How many nodes the tree has.
    fn size(&self) -> usize {
        match &self.value {
            Value::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(entries) => 1 + entries.iter().map(|e| e.value.size()).sum::<usize>(),
            _ => 1,
        }
    }
}

/// What is wrong with a YAML text: the line and docker's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// The line (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// A collection being built.
enum Frame {
    Seq {
        items: Vec<Node>,
        line: usize,
        anchor: usize,
    },
    Map {
        entries: Vec<Entry>,
        key: Option<(String, usize)>,
        line: usize,
        anchor: usize,
    },
}

/// Parses `text` into a tree (the first document; `None` for an empty stream).
///
/// # Errors
/// Bad YAML (with the scanner's line and words), keys that are not scalars, duplicate
/// keys, aliases to unknown anchors, bad merge keys, nesting deeper than 64 or more
/// than 200,000 nodes once aliases are expanded.
pub fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlError {
            line: e.marker().line().max(1),
            message: e.info().to_owned(),
        })?;
        let line = span.start.line().max(1);
        let done = match event {
            Event::StreamStart | Event::DocumentStart(_) | Event::Nothing => None,
            Event::DocumentEnd | Event::StreamEnd => return Ok(None),
            Event::Alias(id) => {
                let node = anchors.get(&id).cloned().ok_or_else(|| YamlError {
                    line,
                    message: "unknown anchor".into(),
                })?;
                nodes += node.size();
                Some((node, line))
            }
            Event::Scalar(text, style, anchor, tag) => {
                nodes += 1;
                let node = Node {
                    value: scalar(&text, style, tag.as_deref()),
                    line,
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some((node, line))
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq {
                    items: Vec::new(),
                    line,
                    anchor,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map {
                    entries: Vec::new(),
                    key: None,
                    line,
                    anchor,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq {
                        items,
                        line,
                        anchor,
                    }) => (
                        Node {
                            value: Value::Seq(items),
                            line,
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        entries,
                        line,
                        anchor,
                        ..
                    }) => (
                        Node {
                            value: Value::Map(apply_merge_keys(entries)?),
                            line,
                        },
                        anchor,
                    ),
                    None => return Err(yaml_error(line, "unbalanced collection")),
                };
                nodes += 1;
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                let at = node.line;
                Some((node, at))
            }
        };
        if stack.len() > MAX_DEPTH {
            return Err(yaml_error(line, "collections nest too deeply"));
        }
        if nodes > MAX_NODES {
            return Err(yaml_error(
                line,
                "document too large (aliases expand too far)",
            ));
        }
        let Some((node, line)) = done else { continue };
        match stack.last_mut() {
            None => return Ok(Some(node)),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let text = match node.value {
                        Value::Str(s) => s,
                        Value::Null => "null".into(),
                        Value::Bool(b) => b.to_string(),
                        Value::Int(i) => i.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(yaml_error(line, "mapping keys must be strings"));
                        }
                    };
                    if entries.iter().any(|e| e.key == text) {
                        return Err(yaml_error(
                            line,
                            &format!("mapping key {text:?} already defined"),
                        ));
                    }
                    *key = Some((text, line));
                }
                Some((key, line)) => entries.push(Entry {
                    key,
                    line,
                    value: node,
                }),
            },
        }
    }
    Ok(None)
}

fn yaml_error(line: usize, message: &str) -> YamlError {
    YamlError {
        line,
        message: message.to_owned(),
    }
}

/// Replaces `<<` entries by the keys of the mapping(s) they name that the mapping does
/// not set itself.
fn apply_merge_keys(entries: Vec<Entry>) -> Result<Vec<Entry>, YamlError> {
    if !entries.iter().any(|e| e.key == "<<") {
        return Ok(entries);
    }
    let mut own = Vec::with_capacity(entries.len());
    let mut merged: Vec<Entry> = Vec::new();
    for entry in entries {
        if entry.key != "<<" {
            own.push(entry);
            continue;
        }
        let sources = match entry.value.value {
            Value::Map(_) => vec![entry.value],
            Value::Seq(items) => items,
            _ => {
                return Err(yaml_error(
                    entry.line,
                    "map merge requires map or sequence of maps as the value",
                ));
            }
        };
        for source in sources {
            let Value::Map(keys) = source.value else {
                return Err(yaml_error(
                    source.line,
                    "map merge requires map or sequence of maps as the value",
                ));
            };
            for e in keys {
                if !merged.iter().any(|m| m.key == e.key) {
                    merged.push(e);
                }
            }
        }
    }
    for e in merged {
        if !own.iter().any(|o| o.key == e.key) {
            own.push(e);
        }
    }
    Ok(own)
}

/// Resolves a scalar: quoted and block scalars and `!!str` are strings; plain ones
/// follow YAML 1.2's core schema (with Go's `0`-prefixed octal).
fn scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    if style != ScalarStyle::Plain || tag.is_some_and(|t| t.suffix == "str") {
        return Value::Str(text.to_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(i) = int(text) {
        return Value::Int(i);
    }
    if is_float(text)
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(text.to_owned())
}

/// An integer as YAML 1.2 and Go write them: decimal, `0x` hex, `0o` or `0` octal.
fn int(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = digits.strip_prefix("0o") {
        (8, oct)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// YAML 1.2 core schema's float: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn is_float(text: &str) -> bool {
    let s = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(at) => (&s[..at], Some(&s[at + 1..])),
        None => (s, None),
    };
    let (whole, frac) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match frac {
        Some(f) => digits(whole) && digits(f) && !(whole.is_empty() && f.is_empty()),
        None => !whole.is_empty() && digits(whole),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Node {
        parse(text).expect("valid YAML").expect("a document")
    }

    #[test]
    fn scalars_resolve_as_yaml_1_2_and_go_do() {
        let t = tree(
            "a: 1\nb: 0440\nc: 1.5\nd: true\ne: yes\nf: ~\ng: '1'\nh: 22:22\ni: 0x1f\nj: -3\nk: 1e3\n",
        );
        assert_eq!(t.get("a").unwrap().value, Value::Int(1));
        assert_eq!(t.get("b").unwrap().value, Value::Int(0o440));
        assert_eq!(t.get("c").unwrap().value, Value::Float(1.5));
        assert_eq!(t.get("d").unwrap().value, Value::Bool(true));
        assert_eq!(t.get("e").unwrap().value, Value::Str("yes".into()));
        assert_eq!(t.get("f").unwrap().value, Value::Null);
        assert_eq!(t.get("g").unwrap().value, Value::Str("1".into()));
        assert_eq!(t.get("h").unwrap().value, Value::Str("22:22".into()));
        assert_eq!(t.get("i").unwrap().value, Value::Int(31));
        assert_eq!(t.get("j").unwrap().value, Value::Int(-3));
        assert_eq!(t.get("k").unwrap().value, Value::Float(1000.0));
    }

    #[test]
    fn nodes_know_their_lines() {
        let t = tree("# comment\nservices:\n  web:\n    image: nginx\n");
        let services = t.get("services").unwrap();
        assert_eq!(t.as_map().unwrap()[0].line, 2);
        let web = services.as_map().unwrap();
        assert_eq!(web[0].line, 3);
        assert_eq!(web[0].value.get("image").unwrap().line, 4);
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let t = tree(
            "x-base: &base\n  image: a\n  user: root\nx-more: &more\n  user: me\n  tty: true\nweb:\n  <<: [*base, *more]\n  image: b\nlist: &l [1, 2]\nother: *l\n",
        );
        let web = t.get("web").unwrap();
        assert_eq!(web.get("image").unwrap().value, Value::Str("b".into()));
        assert_eq!(web.get("user").unwrap().value, Value::Str("root".into()));
        assert_eq!(web.get("tty").unwrap().value, Value::Bool(true));
        assert!(web.get("<<").is_none());
        assert_eq!(t.get("other").unwrap().value, t.get("list").unwrap().value);
    }

    #[test]
    fn bad_yaml_says_where() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("already defined"), "{err:?}");
        let err = parse("a: *nope\n").unwrap_err();
        assert_eq!(err.line, 1);
        let err = parse("a:\n  <<: 3\n").unwrap_err();
        assert!(err.message.contains("map merge"), "{err:?}");
    }

    #[test]
    fn aliases_cannot_explode_and_nesting_is_bounded() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for name in 'b'..='k' {
            text.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = name;
        }
        assert!(parse(&text).unwrap_err().message.contains("too large"));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(&deep).unwrap_err().message.contains("deeply"));
    }
}
