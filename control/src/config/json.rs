//! JSON text -> JSON value the way Envoy reads a `.json` bootstrap: protobuf's JSON lexer
//! with its legacy syntax, which accepts beyond RFC 8259 (each checked against Envoy 1.40):
//!
//! - strings in single quotes (`'abc'`), and the escapes `\'` and `\U0041`;
//! - control characters inside strings;
//! - object keys without quotes when they are words (`{static_resources: ...}`: letters,
//!   digits and `_`, not starting with a digit, not `true`, `false` or `null`);
//! - a comma after the last member of an object or element of a list.
//!
//! Like protobuf's lexer it allows at most [`super::yaml::MAX_DEPTH`] nested objects and
//! lists, and refuses numbers with a leading `+` or zero (`+1`, `01`), `NaN`, comments, and
//! anything after the value. A key given twice in one object is refused, naming it: Envoy
//! merges or refuses such keys depending on the field, so no choice here would always agree.

use super::yaml::MAX_DEPTH;
use crate::error::{ConfigError, ErrorKind};
use crate::path::{field, index};
use serde_json::{Map, Number, Value};

/// The JSON value of `text`, or a syntax error (path empty, or the duplicate key's).
pub(crate) fn to_json(text: &str) -> Result<Value, ConfigError> {
    let mut p = Lexer {
        s: text.as_bytes(),
        at: 0,
        text,
    };
    let value = p.value(0, "")?;
    p.skip_ws();
    if p.at < p.s.len() {
        return Err(p.error("extraneous characters after the value"));
    }
    Ok(value)
}

struct Lexer<'a> {
    s: &'a [u8],
    at: usize,
    text: &'a str,
}

impl Lexer<'_> {
    fn error(&self, message: &str) -> ConfigError {
        let before = &self.text[..self.at.min(self.text.len())];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::new(
            ErrorKind::Syntax,
            "",
            format!("invalid JSON: {message} at line {line} column {column}"),
        )
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.at += 1;
        }
    }

    /// Consumes `c` after whitespace, if it is next.
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize, path: &str) -> Result<Value, ConfigError> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(depth + 1, path),
            Some(b'[') => self.array(depth + 1, path),
            Some(b'"' | b'\'') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.word("true", Value::Bool(true)),
            Some(b'f') => self.word("false", Value::Bool(false)),
            Some(b'n') => self.word("null", Value::Null),
            Some(c) => Err(self.error(&format!("unexpected character '{}'", c as char))),
            None => Err(self.error("unexpected end of the text")),
        }
    }

    fn nest(&self, depth: usize) -> Result<(), ConfigError> {
        if depth > MAX_DEPTH {
            return Err(self.error(&format!(
                "nested too deeply: more than {MAX_DEPTH} levels of objects and lists (as \
                 Envoy's protobuf JSON parser allows)"
            )));
        }
        Ok(())
    }

    fn object(&mut self, depth: usize, path: &str) -> Result<Value, ConfigError> {
        self.nest(depth)?;
        self.at += 1;
        let mut map = Map::new();
        loop {
            if self.eat(b'}') {
                return Ok(Value::Object(map));
            }
            self.skip_ws();
            let key = match self.peek() {
                Some(b'"' | b'\'') => self.string()?,
                _ => self.bare_word()?,
            };
            if !self.eat(b':') {
                return Err(self.error("expected ':'"));
            }
            let kpath = field(path, &key);
            let value = self.value(depth, &kpath)?;
            if map.contains_key(&key) {
                return Err(ConfigError::invalid(
                    kpath,
                    "given twice in one object (Envoy merges or refuses a repeated key \
                     depending on the field; Switchyard refuses it)",
                ));
            }
            map.insert(key, value);
            // A comma before the closing brace is accepted.
            if !self.eat(b',')
                && !matches!(
                    {
                        self.skip_ws();
                        self.peek()
                    },
                    Some(b'}')
                )
            {
                return Err(self.error("expected ',' or '}'"));
            }
        }
    }

    fn array(&mut self, depth: usize, path: &str) -> Result<Value, ConfigError> {
        self.nest(depth)?;
        self.at += 1;
        let mut items = Vec::new();
        loop {
            if self.eat(b']') {
                return Ok(Value::Array(items));
            }
            items.push(self.value(depth, &index(path, items.len()))?);
            if !self.eat(b',')
                && !matches!(
                    {
                        self.skip_ws();
                        self.peek()
                    },
                    Some(b']')
                )
            {
                return Err(self.error("expected ',' or ']'"));
            }
        }
    }

    fn word(&mut self, word: &str, value: Value) -> Result<Value, ConfigError> {
        if self.s[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error(&format!("expected '{word}'")))
        }
    }

    /// An unquoted key: letters, digits and `_`, not starting with a digit.
    fn bare_word(&mut self) -> Result<String, ConfigError> {
        let start = self.at;
        while matches!(self.peek(), Some(c) if c == b'_' || c.is_ascii_alphanumeric()) {
            self.at += 1;
        }
        let word = &self.text[start..self.at];
        if word.is_empty()
            || word.as_bytes()[0].is_ascii_digit()
            || matches!(word, "true" | "false" | "null")
        {
            self.at = start;
            return Err(self.error("expected a key"));
        }
        Ok(word.to_string())
    }

    fn string(&mut self) -> Result<String, ConfigError> {
        let quote = self.s[self.at];
        self.at += 1;
        let mut out = String::new();
        loop {
            let rest = &self.text[self.at..];
            let Some(i) = rest.find([quote as char, '\\']) else {
                self.at = self.s.len();
                return Err(self.error("unterminated string"));
            };
            out.push_str(&rest[..i]);
            self.at += i + 1;
            if self.s[self.at - 1] == quote {
                return Ok(out);
            }
            let Some(e) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match e {
                b'"' => out.push('"'),
                b'\'' => out.push('\''),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' | b'U' => out.push(self.unicode_escape()?),
                _ => {
                    self.at -= 1;
                    return Err(self.error(&format!("invalid escape '\\{}'", e as char)));
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ConfigError> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("invalid Unicode escape"))?;
        self.at += 4;
        Ok(u32::from_str_radix(digits, 16).expect("four hex digits"))
    }

    fn unicode_escape(&mut self) -> Result<char, ConfigError> {
        let high = self.hex4()?;
        let code = match high {
            0xd800..=0xdbff => {
                if !self.s[self.at..].starts_with(b"\\u") {
                    return Err(self.error("unpaired high surrogate"));
                }
                self.at += 2;
                let low = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&low) {
                    return Err(self.error("invalid low surrogate"));
                }
                0x10000 + ((high & 0x3ff) << 10) + (low & 0x3ff)
            }
            0xdc00..=0xdfff => return Err(self.error("unpaired low surrogate")),
            c => c,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid code point"))
    }

    /// A number: `-`, digits without a leading zero, an optional fraction and exponent.
    fn number(&mut self) -> Result<Value, ConfigError> {
        let start = self.at;
        let digits = |l: &mut Self| {
            let s = l.at;
            while matches!(l.peek(), Some(b'0'..=b'9')) {
                l.at += 1;
            }
            l.at - s
        };
        self.at += usize::from(self.peek() == Some(b'-'));
        let int_start = self.at;
        let n = digits(self);
        if n == 0 {
            return Err(self.error("expected a number"));
        }
        if n > 1 && self.s[int_start] == b'0' {
            return Err(self.error("a number cannot have a leading zero"));
        }
        let mut integral = true;
        if self.peek() == Some(b'.') {
            self.at += 1;
            integral = false;
            if digits(self) == 0 {
                return Err(self.error("a number cannot end in '.'"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            integral = false;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(self.error("expected an exponent"));
            }
        }
        let raw = &self.text[start..self.at];
        if integral {
            if let Ok(i) = raw.parse::<i64>() {
                return Ok(Value::from(i));
            }
            if let Ok(u) = raw.parse::<u64>() {
                return Ok(Value::from(u));
            }
        }
        match raw.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Ok(Value::Number(n)),
            None => Err(self.error(&format!("invalid number {raw}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(text: &str) -> Value {
        to_json(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> ConfigError {
        to_json(text).expect_err(text)
    }

    #[test]
    fn standard_json() {
        assert_eq!(
            ok(r#" {"a": [1, -2.5, 1e2, true, false, null, "x\"\n\u00e9\ud83d\ude00"]} "#),
            json!({"a": [1, -2.5, 100.0, true, false, null, "x\"\n\u{e9}\u{1f600}"]})
        );
        assert_eq!(ok("18446744073709551615"), json!(u64::MAX));
        assert_eq!(ok("[]"), json!([]));
    }

    #[test]
    fn protobufs_legacy_syntax() {
        assert_eq!(
            ok("{static_resources: {'clusters': [{'name': 'c\\'s',},],},}"),
            json!({"static_resources": {"clusters": [{"name": "c's"}]}})
        );
        assert_eq!(ok("\"a\tb\""), json!("a\tb"));
        assert_eq!(ok(r#""\U0041""#), json!("A"));
    }

    #[test]
    fn what_protobuf_refuses() {
        for text in [
            "+1",
            "01",
            "1.",
            ".5",
            "NaN",
            "{/* c */}",
            "{1a: 2}",
            "{true: 1}",
            "[1,,2]",
            "[1 2]",
            "{\"a\" 1}",
            "\"\\x\"",
            "\"abc",
            "1 2",
            "truex",
        ] {
            assert_eq!(err(text).kind(), ErrorKind::Syntax, "{text}");
        }
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(to_json(&nest(MAX_DEPTH)).is_ok());
        assert!(err(&nest(MAX_DEPTH + 1))
            .message()
            .contains("nested too deeply"));
        let e = err(r#"{"a": {"b": 1, "b": 2}}"#);
        assert_eq!(e.path(), "a.b");
    }
}
