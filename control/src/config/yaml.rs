//! YAML text -> JSON value the way Envoy reads a bootstrap.
//!
//! Envoy (`MessageUtil::loadFromYaml`) loads the first document with yaml-cpp, turns each node
//! into a `google.protobuf.Value` (`parseYamlNode`), prints that as JSON and hands the JSON to
//! protobuf's parser. So a scalar's JSON type is decided by yaml-cpp's conversions, not by the
//! YAML 1.2 core schema:
//!
//! - a quoted or block scalar, or one tagged with the non-specific `!`, is a string;
//! - a plain `~`, `null`, `Null`, `NULL` or empty scalar without a tag is null;
//! - otherwise a scalar yaml-cpp reads as a bool is one: `y`, `yes`, `true`, `on` and `n`,
//!   `no`, `false`, `off`, each in lower case, upper case or capitalised (`Yes`, `YES`);
//! - otherwise one it reads as a 64-bit integer is a number (a string of its decimal digits
//!   outside the 32-bit range): decimal, hexadecimal (`0x1F`) or octal (leading `0`: `010` is
//!   8), with an optional sign;
//! - anything else is a string, floating-point spellings (`1.5`, `1e3`, `.inf`) included:
//!   protobuf parses the string by the field's type later.
//!
//! Explicit tags (`!!str`, `!!int`) do not change this (only the bare `!` does), as in
//! yaml-cpp. A mapping key tagged `!ignore` is left out with its value (Envoy's way of
//! keeping YAML anchors in a bootstrap); every other key is its scalar's text. Merge keys
//! (`<<`) are ordinary keys, as in yaml-cpp (the walker then names them as unknown fields). A
//! key given twice keeps its last value. Documents after the first are not read.
//!
//! Limits: at most [`MAX_DEPTH`] nested mappings and lists (protobuf's JSON parser refuses
//! deeper documents in Envoy), and at most [`super::yaml_node_limit`] nodes, counting what
//! aliases expand to, so an alias bomb is refused as soon as it outgrows its file.

use crate::error::{ConfigError, ErrorKind};
use granit_parser::{Event, Parser, ScalarStyle, Tag};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Most mappings and lists nested in one another: protobuf's JSON parser (recursion depth
/// 100) refuses a deeper document in Envoy.
pub const MAX_DEPTH: usize = 100;

/// Least scalar text (counting what aliases expand to) a document may carry, however small.
const MIN_SCALAR_BYTES: usize = 64 << 20;

/// The first document of `text` as Envoy's JSON, or a syntax error (path empty).
pub(crate) fn to_json(text: &str) -> Result<Value, ConfigError> {
    let options = granit_parser::options! { emit_comments: false };
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        node_limit: super::yaml_node_limit(text.len()),
        bytes: 0,
        byte_limit: text.len().max(MIN_SCALAR_BYTES),
        len: text.len(),
    };
    for event in Parser::new_from_str_with_options(text, options) {
        let (event, span) = event.map_err(|e| syntax(format!("invalid YAML: {e}")))?;
        let at = |m: String| {
            syntax(format!(
                "invalid YAML: {m} at line {} column {}",
                span.start.line(),
                span.start.col() + 1
            ))
        };
        let done = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let node = Node::scalar(&text, style, tag.as_deref());
                builder.count(1, text.len()).map_err(at)?;
                builder.complete(node, anchor, 0).map_err(at)?
            }
            Event::SequenceStart(_, anchor, _) => {
                builder.open(Frame::seq(anchor)).map_err(at)?;
                None
            }
            Event::MappingStart(_, anchor, _) => {
                builder.open(Frame::map(anchor)).map_err(at)?;
                None
            }
            Event::SequenceEnd | Event::MappingEnd => builder.close().map_err(at)?,
            Event::Alias(id) => builder.alias(id).map_err(at)?,
            Event::DocumentEnd => return Ok(Value::Null),
            // Stream and document starts, comments, anchor metadata.
            _ => None,
        };
        if let Some(root) = done {
            return Ok(root);
        }
    }
    Ok(Value::Null)
}

fn syntax(message: String) -> ConfigError {
    ConfigError::new(ErrorKind::Syntax, "", message)
}

/// One finished node: its JSON value, and for a scalar its text (a key is a scalar's text,
/// whatever its value became).
#[derive(Clone)]
struct Node {
    value: Value,
    /// The scalar's text, or `None` for a collection.
    text: Option<String>,
    /// The tag (yaml-cpp's spelling) of a key, to find `!ignore`.
    tag: Option<String>,
}

impl Node {
    fn scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Node {
        let tag = tag.map(|t| format!("{}{}", t.handle(), t.suffix()));
        Node {
            value: scalar_value(text, style, tag.as_deref()),
            text: Some(text.to_string()),
            tag,
        }
    }
}

/// A scalar's JSON value by yaml-cpp's conversions (see the module documentation).
fn scalar_value(text: &str, style: ScalarStyle, tag: Option<&str>) -> Value {
    let plain = style == ScalarStyle::Plain;
    if plain && tag.is_none() && matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Value::Null;
    }
    // yaml-cpp gives a quoted or block scalar the non-specific tag `!`; a plain one without
    // a tag gets `?`.
    let tag = tag.unwrap_or(if plain { "?" } else { "!" });
    if tag == "!" {
        return Value::String(text.to_string());
    }
    if let Some(b) = yaml_cpp_bool(text) {
        return Value::Bool(b);
    }
    match yaml_cpp_int(text) {
        Some(i) if i32::try_from(i).is_ok() => Value::from(i),
        Some(i) => Value::String(i.to_string()),
        None => Value::String(text.to_string()),
    }
}

/// yaml-cpp's `convert<bool>`: `y`/`yes`/`true`/`on` and `n`/`no`/`false`/`off`, in lower
/// case, upper case, or capitalised.
fn yaml_cpp_bool(s: &str) -> Option<bool> {
    let lower = |s: &str| s.bytes().all(|b| b.is_ascii_lowercase());
    let upper = |s: &str| s.bytes().all(|b| b.is_ascii_uppercase());
    let flexible = lower(s)
        || s.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
            && (lower(&s[1..]) || upper(&s[1..]));
    if !flexible {
        return None;
    }
    match s.to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "on" => Some(true),
        "n" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// yaml-cpp's `convert<int64_t>`: a C++ stream read with the base taken from the prefix
/// (`0x` hexadecimal, `0` octal, else decimal), optional sign, the whole text consumed.
fn yaml_cpp_int(s: &str) -> Option<i64> {
    let (negative, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) =
        if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            (16, hex)
        } else if body.len() > 1 && body.starts_with('0') {
            (8, &body[1..])
        } else {
            (10, body)
        };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// A collection being built.
struct Frame {
    anchor: usize,
    /// Nodes and scalar bytes counted before it opened (its own count is the difference).
    nodes_before: usize,
    bytes_before: usize,
    /// The deepest nesting inside it, itself counted.
    height: usize,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<Value>),
    /// A mapping and the key waiting for its value.
    Map(Map<String, Value>, Option<Key>),
}

enum Key {
    Name(String),
    /// `!ignore`: the value is read and left out.
    Ignore,
}

impl Frame {
    fn seq(anchor: usize) -> Frame {
        Frame::new(anchor, FrameKind::Seq(Vec::new()))
    }
    fn map(anchor: usize) -> Frame {
        Frame::new(anchor, FrameKind::Map(Map::new(), None))
    }
    fn new(anchor: usize, kind: FrameKind) -> Frame {
        Frame {
            anchor,
            nodes_before: 0,
            bytes_before: 0,
            height: 1,
            kind,
        }
    }
}

/// An anchored node, kept for its aliases.
struct Anchored {
    node: Node,
    nodes: usize,
    bytes: usize,
    height: usize,
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    nodes: usize,
    node_limit: usize,
    bytes: usize,
    byte_limit: usize,
    len: usize,
}

impl Builder {
    fn count(&mut self, nodes: usize, bytes: usize) -> Result<(), String> {
        self.nodes = self.nodes.saturating_add(nodes);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.nodes > self.node_limit {
            return Err(format!(
                "the document is too large: more than {} nodes (mappings, lists and values, \
                 counting what aliases expand to) in {} bytes; the limit is one node per byte \
                 of the file, at least {}, so aliases cannot expand a small file into a huge \
                 tree",
                self.node_limit,
                self.len,
                super::MIN_YAML_NODE_LIMIT
            ));
        }
        if self.bytes > self.byte_limit {
            return Err(format!(
                "the document is too large: more than {} bytes of values, counting what \
                 aliases expand to",
                self.byte_limit
            ));
        }
        Ok(())
    }

    fn check_depth(&self, extra: usize) -> Result<(), String> {
        if self.stack.len() + extra > MAX_DEPTH {
            return Err(format!(
                "nested too deeply: more than {MAX_DEPTH} levels of mappings and lists (as \
                 Envoy's protobuf JSON parser allows)"
            ));
        }
        Ok(())
    }

    fn open(&mut self, mut frame: Frame) -> Result<(), String> {
        self.check_depth(1)?;
        self.count(1, 0)?;
        frame.nodes_before = self.nodes - 1;
        frame.bytes_before = self.bytes;
        if let Some(Frame {
            kind: FrameKind::Map(_, None),
            ..
        }) = self.stack.last()
        {
            return Err("a mapping key must be a scalar".into());
        }
        self.stack.push(frame);
        Ok(())
    }

    fn close(&mut self) -> Result<Option<Value>, String> {
        let frame = self.stack.pop().ok_or("unbalanced end of a collection")?;
        let nodes = self.nodes - frame.nodes_before;
        let bytes = self.bytes - frame.bytes_before;
        let value = match frame.kind {
            FrameKind::Seq(items) => Value::Array(items),
            FrameKind::Map(map, None) => Value::Object(map),
            FrameKind::Map(_, Some(_)) => return Err("a mapping key without a value".into()),
        };
        let node = Node {
            value,
            text: None,
            tag: None,
        };
        if frame.anchor != 0 {
            self.anchors.insert(
                frame.anchor,
                Anchored {
                    node: node.clone(),
                    nodes,
                    bytes,
                    height: frame.height,
                },
            );
        }
        self.place(node, frame.height)
    }

    /// A finished scalar (or replayed alias) of nesting `height`, anchored as `anchor`.
    fn complete(
        &mut self,
        node: Node,
        anchor: usize,
        height: usize,
    ) -> Result<Option<Value>, String> {
        if anchor != 0 {
            self.anchors.insert(
                anchor,
                Anchored {
                    node: node.clone(),
                    nodes: 1,
                    bytes: node.text.as_ref().map_or(0, String::len),
                    height,
                },
            );
        }
        self.place(node, height)
    }

    fn alias(&mut self, id: usize) -> Result<Option<Value>, String> {
        let Some(a) = self.anchors.get(&id) else {
            return Err(
                "an alias of a node that is not finished (a node cannot contain itself)".into(),
            );
        };
        let (nodes, bytes, height) = (a.nodes, a.bytes, a.height);
        self.check_depth(height)?;
        self.count(nodes, bytes)?;
        let node = self.anchors[&id].node.clone();
        self.place(node, height)
    }

    /// Puts a finished node into its parent; the root comes back.
    fn place(&mut self, node: Node, height: usize) -> Result<Option<Value>, String> {
        let Some(parent) = self.stack.last_mut() else {
            return Ok(Some(node.value));
        };
        parent.height = parent.height.max(height + 1);
        match &mut parent.kind {
            FrameKind::Seq(items) => items.push(node.value),
            FrameKind::Map(_, key @ None) => {
                let Some(text) = node.text else {
                    return Err("a mapping key must be a scalar".into());
                };
                *key = Some(if node.tag.as_deref() == Some("!ignore") {
                    Key::Ignore
                } else if node.value.is_null() {
                    // yaml-cpp reads a null key as the text "null".
                    Key::Name("null".into())
                } else {
                    Key::Name(text)
                });
            }
            FrameKind::Map(map, key @ Some(_)) => {
                if let Some(Key::Name(name)) = key.take() {
                    // A key given twice keeps its last value, as in Envoy.
                    map.insert(name, node.value);
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn yaml(text: &str) -> Value {
        to_json(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn scalar(text: &str) -> Value {
        yaml(&format!("v: {text}"))["v"].clone()
    }

    #[test]
    fn scalars_take_yaml_cpp_types() {
        for (text, want) in [
            ("abc", json!("abc")),
            ("10000", json!(10000)),
            ("-7", json!(-7)),
            ("+12", json!(12)),
            ("0x2710", json!(10000)),
            ("-0x10", json!(-16)),
            ("010", json!(8)),
            ("08", json!("08")),
            ("0o17", json!("0o17")),
            ("10_000", json!("10_000")),
            ("4294967295", json!("4294967295")),
            ("2147483647", json!(2147483647)),
            ("99999999999999999999", json!("99999999999999999999")),
            ("1.5", json!("1.5")),
            ("1e3", json!("1e3")),
            (".inf", json!(".inf")),
            ("127.0.0.1", json!("127.0.0.1")),
            ("::1", json!("::1")),
            ("0.25s", json!("0.25s")),
            ("2001-12-14", json!("2001-12-14")),
            ("true", json!(true)),
            ("True", json!(true)),
            ("TRUE", json!(true)),
            ("yes", json!(true)),
            ("Yes", json!(true)),
            ("y", json!(true)),
            ("on", json!(true)),
            ("ON", json!(true)),
            ("off", json!(false)),
            ("No", json!(false)),
            ("n", json!(false)),
            ("tRUE", json!("tRUE")),
            ("yEs", json!("yEs")),
            ("~", Value::Null),
            ("null", Value::Null),
            ("NULL", Value::Null),
            ("", Value::Null),
            ("\"123\"", json!("123")),
            ("'yes'", json!("yes")),
            ("\"\"", json!("")),
            ("! 123", json!("123")),
            ("!!str 123", json!(123)),
            ("!!str \"123\"", json!(123)),
            ("!!str abc", json!("abc")),
            ("!!int abc", json!("abc")),
            ("!!null 1s", json!("1s")),
            ("|\n  abc\n", json!("abc\n")),
        ] {
            assert_eq!(scalar(text), want, "{text}");
        }
    }

    #[test]
    fn keys_are_text_and_duplicates_keep_the_last() {
        assert_eq!(
            yaml("5: a\ntrue: b\n~: c\n'x': d"),
            json!({"5": "a", "true": "b", "null": "c", "x": "d"})
        );
        assert_eq!(yaml("a: 1\na: 2"), json!({"a": 2}));
        assert_eq!(yaml("<<: {a: 1}"), json!({"<<": {"a": 1}}));
        let e = to_json("{[1]: a}").unwrap_err();
        assert!(e.message().contains("key must be a scalar"), "{e}");
    }

    #[test]
    fn ignore_keys_and_aliases() {
        let v = yaml("!ignore defs: &d {name: c, port: 80}\nx: *d\ny: [*d, *d]");
        assert_eq!(
            v,
            json!({"x": {"name": "c", "port": 80}, "y": [{"name": "c", "port": 80}, {"name": "c", "port": 80}]})
        );
        assert_eq!(
            yaml("a: &s yes\nb: *s\n*s : 1"),
            json!({"a": true, "b": true, "yes": 1})
        );
    }

    #[test]
    fn only_the_first_document() {
        assert_eq!(yaml("a: 1\n---\nb: [2"), json!({"a": 1}));
        assert_eq!(to_json("").unwrap(), Value::Null);
        assert_eq!(to_json("# only a comment\n").unwrap(), Value::Null);
    }

    #[test]
    fn depth_is_limited_as_in_envoy() {
        let nest = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(to_json(&nest(MAX_DEPTH)).is_ok());
        let e = to_json(&nest(MAX_DEPTH + 1)).unwrap_err();
        assert!(e.message().contains("nested too deeply"), "{e}");
        // An alias counts with the depth it brings.
        let deep = format!("a: &a {}\nb: [*a]", nest(MAX_DEPTH - 1));
        let e = to_json(&deep).unwrap_err();
        assert!(e.message().contains("nested too deeply"), "{e}");
    }

    #[test]
    fn aliases_count_against_the_node_budget() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..9 {
            let prev = format!("*a{}", level - 1);
            text.push_str(&format!(
                "a{level}: &a{level} [{}]\n",
                [prev.as_str(); 10].join(", ")
            ));
        }
        let e = to_json(&text).unwrap_err();
        assert!(e.message().contains("nodes"), "{e}");
        let e = to_json("a: &a [*a]").unwrap_err();
        assert!(e.message().contains("alias"), "{e}");
    }

    #[test]
    fn syntax_errors_say_where() {
        let e = to_json("a: [1, 2").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Syntax);
        assert!(e.message().starts_with("invalid YAML"), "{e}");
    }
}
