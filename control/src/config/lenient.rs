//! What Envoy's JSON parser accepts beyond the proto3 JSON mapping, and the canonical form
//! the walker rewrites it into.
//!
//! Envoy parses every bootstrap (a YAML one after turning it into JSON) with protobuf's
//! `JsonStringToMessage`, with `case_insensitive_enum_parsing` on; protobuf runs its parser
//! with `allow_legacy_syntax` on. Together they accept, each checked against Envoy 1.40:
//!
//! - enum names in any case (`static`, `Round_Robin`), and enum numbers as numbers or as
//!   decimal strings (`3`, `"3"`);
//! - a single value where a list is expected (`filters: {name: ...}` is one filter); a list
//!   inside a list is flattened into it, and `null` inside a list is the element's default;
//! - a bool as a string: `"true"`, `"t"`, `"yes"`, `"y"`, `"1"` and `"false"`, `"f"`,
//!   `"no"`, `"n"`, `"0"`, in any case;
//! - an integer as a number or a string, decimal (`"+12"`, `"007"`) or any number with no
//!   fractional part (`1e4`, `"10000.0"`, `"0x10"`); a floating-point number as a string;
//! - a duration as an object `{seconds: 5, nanos: 0}`, a wrapper (`UInt32Value`, ...) as an
//!   object `{value: 5}`.
//!
//! Everything else protobuf refuses, and so does the walker.

use prost_reflect::{FieldDescriptor, Kind};
use serde_json::{Number, Value};

/// The elements of a repeated field's `value`: a single value is a list of one, lists inside
/// the list are flattened into it (except for `google.protobuf.Value` and `ListValue`
/// elements, which may be lists themselves), and `null` is the element's default.
pub(crate) fn list(fd: &FieldDescriptor, value: Value) -> Vec<Value> {
    let wkt = match fd.kind() {
        Kind::Message(m) => Some(m.full_name().to_string()),
        Kind::Enum(e) => Some(e.full_name().to_string()),
        _ => None,
    };
    let flatten = !matches!(
        wkt.as_deref(),
        Some("google.protobuf.Value" | "google.protobuf.ListValue")
    );
    // A `Value` (or `NullValue`) element may be null itself.
    let keep_null = matches!(
        wkt.as_deref(),
        Some("google.protobuf.Value" | "google.protobuf.NullValue")
    );
    fn push(
        item: Value,
        out: &mut Vec<Value>,
        fd: &FieldDescriptor,
        flatten: bool,
        keep_null: bool,
    ) {
        match item {
            Value::Array(inner) if flatten => {
                for i in inner {
                    push(i, out, fd, flatten, keep_null);
                }
            }
            Value::Null if !keep_null => out.push(default_value(fd)),
            other => out.push(other),
        }
    }
    let mut out = Vec::new();
    match value {
        Value::Array(items) => {
            for item in items {
                push(item, &mut out, fd, flatten, keep_null);
            }
        }
        single => out.push(single),
    }
    out
}

/// The JSON of field `fd`'s default value (what protobuf sets for a `null` list element).
pub(crate) fn default_value(fd: &FieldDescriptor) -> Value {
    match fd.kind() {
        Kind::Bool => Value::Bool(false),
        Kind::String | Kind::Bytes => Value::String(String::new()),
        Kind::Double | Kind::Float => Value::from(0.0),
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Duration" => Value::String("0s".into()),
            "google.protobuf.Timestamp" => Value::String("1970-01-01T00:00:00Z".into()),
            "google.protobuf.FieldMask" => Value::String(String::new()),
            "google.protobuf.ListValue" => Value::Array(Vec::new()),
            "google.protobuf.Value" => Value::Null,
            name if name.starts_with("google.protobuf.") && name.ends_with("Value") => {
                let inner = m.get_field_by_name("value").expect("wrappers have 'value'");
                default_value(&inner)
            }
            _ => Value::Object(Default::default()),
        },
        // Integers and enums.
        _ => Value::from(0),
    }
}

/// A duration as proto3 JSON: seconds, up to nine digits of fraction, `s`.
pub(crate) fn duration_text(seconds: i64, nanos: i32) -> String {
    if nanos == 0 {
        return format!("{seconds}s");
    }
    let sign = if seconds < 0 || nanos < 0 { "-" } else { "" };
    let fraction = format!("{:09}", nanos.unsigned_abs());
    format!(
        "{sign}{}.{}s",
        seconds.unsigned_abs(),
        fraction.trim_end_matches('0')
    )
}

/// A bool given as a string (Abseil's `SimpleAtob`, which protobuf's legacy syntax uses).
pub(crate) fn bool_text(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// A decimal integer with an optional sign (Abseil's `SimpleAtoi`, without its whitespace).
pub(crate) fn decimal(s: &str) -> Option<i128> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || digits.len() > 30 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i128 = digits.parse().ok()?;
    Some(if s.starts_with('-') { -n } else { n })
}

/// A number as Abseil's `SimpleAtod` reads it: surrounding whitespace, an optional sign, a
/// decimal number (`12.`, `.5e1`), a hexadecimal one (`0x10`, `0x1p4`), `inf` or `nan`.
/// Out of range is infinite.
pub(crate) fn atod(s: &str) -> Option<f64> {
    let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let s = match s.strip_prefix('+') {
        Some(rest) if rest.starts_with('-') => return None,
        Some(rest) => rest,
        None => s,
    };
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let magnitude = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        hex_float(hex)?
    } else if ["inf", "infinity"]
        .iter()
        .any(|w| body.eq_ignore_ascii_case(w))
    {
        f64::INFINITY
    } else if body.eq_ignore_ascii_case("nan") {
        f64::NAN
    } else {
        if !decimal_float_syntax(body) {
            return None;
        }
        body.parse::<f64>().ok()?
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// `digits [. digits] [e [sign] digits]` or `. digits [e ...]`.
fn decimal_float_syntax(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) || (int.is_empty() && frac.is_empty()) {
        return false;
    }
    match exponent {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && digits(e)
        }
    }
}

/// The part of a hexadecimal float after `0x`: `hex [. hex] [p [sign] decimal]`.
fn hex_float(s: &str) -> Option<f64> {
    let (mantissa, exponent) = match s.find(['p', 'P']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut value = 0f64;
    for c in int.chars() {
        value = value * 16.0 + f64::from(c.to_digit(16)?);
    }
    let mut scale = 1.0 / 16.0;
    for c in frac.chars() {
        value += f64::from(c.to_digit(16)?) * scale;
        scale /= 16.0;
    }
    if let Some(e) = exponent {
        let e = decimal(e)?;
        value *= 2f64.powi(i32::try_from(e.clamp(-2000, 2000)).ok()?);
    }
    Some(value)
}

/// An integer field's value: a JSON integer, or a number or string with no fractional part,
/// as protobuf reads it (decimal first, then as a floating-point number within 2^53, or 2^54
/// unsigned). Strings may not hold whitespace.
pub(crate) fn int(value: &Value, unsigned: bool) -> Result<i128, &'static str> {
    let (lo, hi) = if unsigned {
        (0.0, 18_014_398_509_481_984.0)
    } else {
        (-9_007_199_254_740_992.0, 9_007_199_254_740_992.0)
    };
    let from_float = |d: f64| -> Result<i128, &'static str> {
        if !d.is_finite() {
            return Err("not a finite number");
        }
        if d < lo || d > hi {
            return Err("out of range");
        }
        if d.fract() != 0.0 {
            return Err("it has a fractional part");
        }
        Ok(d as i128)
    };
    match value {
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) if !(unsigned && i < 0) => Ok(i.into()),
            (_, Some(u)) => Ok(u.into()),
            _ => from_float(n.as_f64().ok_or("not a number")?),
        },
        Value::String(s) => {
            if s.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err("whitespace in a quoted number");
            }
            match decimal(s) {
                Some(n) if !(unsigned && s.starts_with('-')) => Ok(n),
                _ => from_float(atod(s).ok_or("not a number")?),
            }
        }
        _ => Err("a number or a string"),
    }
}

/// A floating-point field's value as canonical JSON: a number, or `"NaN"`, `"Infinity"`,
/// `"-Infinity"`. A string is read by [`atod`]; a 32-bit float must fit.
pub(crate) fn float(value: &Value, is_f32: bool) -> Result<Value, &'static str> {
    let d = match value {
        Value::Number(n) => n.as_f64().ok_or("a number")?,
        Value::String(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => {
            return Ok(value.clone())
        }
        Value::String(s) => atod(s).ok_or("a number")?,
        _ => return Err("a number"),
    };
    if is_f32 && d.is_finite() && !(d as f32).is_finite() {
        return Err("a number that fits a 32-bit float");
    }
    Ok(match Number::from_f64(d) {
        Some(n) => Value::Number(n),
        None if d.is_nan() => Value::String("NaN".into()),
        None if d > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_as_numbers_like_abseil() {
        for (s, want) in [
            ("12", Some(12.0)),
            ("+12", Some(12.0)),
            ("-0", Some(-0.0)),
            ("12.", Some(12.0)),
            (".5e1", Some(5.0)),
            ("1.0e2", Some(100.0)),
            ("0x10", Some(16.0)),
            ("0X10", Some(16.0)),
            ("0x1p4", Some(16.0)),
            ("0x1.8p1", Some(3.0)),
            (" 1.5 ", Some(1.5)),
            ("1_000", None),
            ("+-1", None),
            ("0x", None),
            ("0b11", None),
            ("e5", None),
            ("", None),
            ("１２", None),
        ] {
            assert_eq!(atod(s), want, "{s}");
        }
        assert_eq!(atod("1e400"), Some(f64::INFINITY));
        assert!(atod("nan").unwrap().is_nan());
    }

    #[test]
    fn integers_as_protobuf_reads_them() {
        for (v, unsigned, want) in [
            (json!(80), true, Ok(80)),
            (json!(1e4), true, Ok(10000)),
            (json!(1.0), false, Ok(1)),
            (json!("00012"), true, Ok(12)),
            (json!("+12"), true, Ok(12)),
            (json!("0x10"), true, Ok(16)),
            (json!("12."), true, Ok(12)),
            (json!("1e2"), true, Ok(100)),
            (json!("-0"), true, Ok(0)),
            (json!("-5"), false, Ok(-5)),
            (json!(-5), true, Err("out of range")),
            (json!("-5"), true, Err("out of range")),
            (json!("5e-1"), true, Err("it has a fractional part")),
            (json!(1.5), true, Err("it has a fractional part")),
            (json!(" 12"), true, Err("whitespace in a quoted number")),
            (json!("inf"), true, Err("not a finite number")),
            (json!("1_000"), true, Err("not a number")),
            (json!(true), true, Err("a number or a string")),
        ] {
            assert_eq!(int(&v, unsigned), want, "{v}");
        }
        assert_eq!(
            int(&json!("18446744073709551615"), true),
            Ok(u64::MAX.into())
        );
    }

    #[test]
    fn bools_and_durations() {
        for (s, want) in [
            ("T", Some(true)),
            ("yEs", Some(true)),
            ("1", Some(true)),
            ("off", None),
            ("N", Some(false)),
        ] {
            assert_eq!(bool_text(s), want, "{s}");
        }
        assert_eq!(duration_text(5, 0), "5s");
        assert_eq!(duration_text(1, 500_000_000), "1.5s");
        assert_eq!(duration_text(0, 1), "0.000000001s");
        assert_eq!(float(&json!("1.5"), false), Ok(json!(1.5)));
        assert_eq!(float(&json!("1e400"), false), Ok(json!("Infinity")));
        assert_eq!(
            float(&json!("1e300"), true),
            Err("a number that fits a 32-bit float")
        );
    }
}
