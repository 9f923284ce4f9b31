//! JSON written exactly as JavaScript's `JSON.stringify` writes it.
//!
//! A hyperlog with `valueEncoding: 'json'` (chatwizard's) stores `JSON.stringify(value)` as the
//! node value, and a JS peer forwarding a node live re-encodes it as
//! `JSON.stringify(JSON.parse(bytes))`. If that differs from the original bytes, the next JS
//! receiver computes another key and drops the connection ("Checksum mismatch"). So values a Rust
//! peer writes into such a log must be byte-identical to what JS would write, and
//! [`is_js_canonical`] tells whether bytes survive that round trip.
//!
//! What JS does, and this module with it:
//! - no whitespace;
//! - object keys in JS property order: keys that are array indices (`"0"`, `"1"`, …, up to
//!   `"4294967294"`, in canonical form) first, in ascending numeric order, then every other key in
//!   insertion order (`{"2":1,"1":2}` comes out as `{"1":2,"2":1}`). With serde_json's
//!   `preserve_order` a [`Value`]'s insertion order is its parse order, and a duplicated key keeps
//!   its first position and its last value, as `JSON.parse` does;
//! - numbers as JS `Number#toString`: every number is a double (`12345678901234567890` prints as
//!   `12345678901234567000`), integers without `.0`, the shortest digits that round-trip, exponent
//!   form from `1e+21` up and below `1e-6` (`1e+21`, `1.5e-7`, with the explicit `+`), `-0` as `0`;
//! - strings with `"` `\\` `\b` `\f` `\n` `\r` `\t` escaped, other characters below U+0020 as
//!   `\u00xx` (lowercase hex), and everything else raw UTF-8, including `/`, U+007F, U+2028,
//!   U+2029 and non-ASCII. (JS escapes lone surrogates; a Rust string cannot hold one.)
//!
//! Non-finite numbers would print as `null`, but a `serde_json::Value` cannot hold them. The
//! writer recurses as deep as the value nests (serde_json's parser limits that to 128 levels).

use serde::Serialize;
use serde_json::{Map, Number, Value};

/// `JSON.stringify(value)` as JS prints it.
pub fn stringify(value: &Value) -> String {
    let mut out = String::new();
    write_stringify(value, &mut out);
    out
}

/// Appends `JSON.stringify(value)` to `out`.
pub fn write_stringify(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_stringify(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(map, out),
    }
}

/// Serializes `value` to a [`Value`] (struct fields in declaration order) and stringifies it as
/// JS would.
pub fn to_js_string<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    Ok(stringify(&serde_json::to_value(value)?))
}

/// Whether `JSON.stringify(JSON.parse(bytes))` in JS gives back exactly `bytes`, i.e. whether a
/// JS JSON-encoded hyperlog can forward these bytes live without changing the node key.
///
/// Conservative: bytes that serde_json cannot parse give `false`, including a few that JS would
/// keep (a lone-surrogate escape such as `"\ud800"`) besides the ones JS would change or reject.
pub fn is_js_canonical(bytes: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => stringify(&value).as_bytes() == bytes,
        Err(_) => false,
    }
}

fn write_object(map: &Map<String, Value>, out: &mut String) {
    out.push('{');
    let mut first = true;
    let mut entry = |key: &str, value: &Value, out: &mut String| {
        if !first {
            out.push(',');
        }
        first = false;
        write_string(key, out);
        out.push(':');
        write_stringify(value, out);
    };
    if map.keys().any(|k| array_index(k).is_some()) {
        let mut indexed: Vec<(u32, &str, &Value)> = map
            .iter()
            .filter_map(|(k, v)| array_index(k).map(|i| (i, k.as_str(), v)))
            .collect();
        indexed.sort_unstable_by_key(|&(i, _, _)| i);
        for (_, k, v) in indexed {
            entry(k, v, out);
        }
        for (k, v) in map.iter().filter(|(k, _)| array_index(k).is_none()) {
            entry(k, v, out);
        }
    } else {
        for (k, v) in map {
            entry(k, v, out);
        }
    }
    out.push('}');
}

/// The array index a property key stands for in JS: the canonical decimal form of an integer
/// from 0 to 2^32 − 2.
fn array_index(key: &str) -> Option<u32> {
    let b = key.as_bytes();
    if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    let n: u64 = key.parse().ok()?;
    u32::try_from(n).ok().filter(|&n| n < u32::MAX)
}

fn write_number(n: &Number, out: &mut String) {
    // Every JS number is a double; u64 and i64 values convert with round-to-nearest, as JS's
    // parse of the same digits does.
    match n.as_f64() {
        Some(x) => out.push_str(&number_to_string(x)),
        None => out.push_str("null"),
    }
}

/// A double as JS's `Number.prototype.toString()` prints it (ECMA-262 Number::toString, radix
/// 10), except that NaN and the infinities give `null`, as in JSON.
pub fn number_to_string(x: f64) -> String {
    if !x.is_finite() {
        return "null".to_string();
    }
    if x == 0.0 {
        return "0".to_string();
    }
    let mut out = String::new();
    if x < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` gives the shortest digits that round-trip (the nearest such when there are
    // several), which is what ECMA-262 asks for: "d[.ddd]e[-]x".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exp: i64 = exp.parse().unwrap_or(0);
    let k = digits.len() as i64;
    let n = exp + 1; // the decimal point sits after n digits
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if n - 1 < 0 { '-' } else { '+' });
        out.push_str(&(n - 1).abs().to_string());
    }
    out
}

fn write_string(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            c if c < ' ' => Some(""),
            _ => None,
        };
        if let Some(esc) = escape {
            out.push_str(&s[start..i]);
            if esc.is_empty() {
                let b = c as u32;
                out.push_str("\\u00");
                out.push(char::from(HEX[(b >> 4) as usize & 0xf]));
                out.push(char::from(HEX[b as usize & 0xf]));
            } else {
                out.push_str(esc);
            }
            start = i + c.len_utf8();
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input for `JSON.parse`, what `JSON.stringify(JSON.parse(input))` printed), from
    /// `node -e` under Node v20.20.2, the outputs hard-coded (non-ASCII written as `\u{…}`).
    const GOLDEN: &[(&str, &str)] = &[
        (
            r##"{"time":1461500000000,"who":"a1b2c3","message":"hello #nodeconflondon"}"##,
            "{\"time\":1461500000000,\"who\":\"a1b2c3\",\"message\":\"hello #nodeconflondon\"}",
        ),
        (r#"{"b": 1, "a":2}"#, "{\"b\":1,\"a\":2}"),
        (r#"{"t":1.0}"#, "{\"t\":1}"),
        (r#"{"2":1,"1":2}"#, "{\"1\":2,\"2\":1}"),
        (
            r#"{"b":1,"a":2,"2":3,"1":4,"01":5,"4294967295":6,"4294967294":7,"-1":8,"1.5":9,"0":10," 3":11}"#,
            "{\"0\":10,\"1\":4,\"2\":3,\"4294967294\":7,\"b\":1,\"a\":2,\"01\":5,\"4294967295\":6,\"-1\":8,\"1.5\":9,\" 3\":11}",
        ),
        (r#"{"a":1,"b":2,"a":3}"#, "{\"a\":3,\"b\":2}"),
        (
            "[1e21,1e20,123456789012345680000,1.5e-7,0.000001,1e-6,1e-7,0.0000001,5e-324,1.7976931348623157e308]",
            "[1e+21,100000000000000000000,123456789012345680000,1.5e-7,0.000001,0.000001,1e-7,1e-7,5e-324,1.7976931348623157e+308]",
        ),
        (
            "[2.5,100,1.0,1e0,-1e-7,4.35,0.1,0.30000000000000004,9007199254740993,18446744073709551615,-9223372036854775808,12345678901234567890,1.2345678901234567e-300,-0,-0.0,0.0,1E+2,123e-20,2e-7,1.7976931348623157e-308,-1.5e300,1e23,9.5367431640625e-7]",
            "[2.5,100,1,1,-1e-7,4.35,0.1,0.30000000000000004,9007199254740992,18446744073709552000,-9223372036854776000,12345678901234567000,1.2345678901234568e-300,0,0,0,100,1.23e-18,2e-7,1.7976931348623155e-308,-1.5e+300,1e+23,9.5367431640625e-7]",
        ),
        (
            r#"["\u0000\u0001\u0008\t\n\u000b\f\r\u000e\u001f \" \\ / \/ \u007f \u0080 \u2028 \u2029 é 😀 \ud83d\ude00 \uFEFF"]"#,
            "[\"\\u0000\\u0001\\b\\t\\n\\u000b\\f\\r\\u000e\\u001f \\\" \\\\ / / \u{7f} \u{80} \u{2028} \u{2029} \u{e9} \u{1f600} \u{1f600} \u{feff}\"]",
        ),
        (
            r#"{"\n\u001f\"":"key escapes","ü":[]}"#,
            "{\"\\n\\u001f\\\"\":\"key escapes\",\"\u{fc}\":[]}",
        ),
        (
            r#"[true,false,null,{},[],[{}],{"a":[1,{"b":null}]}]"#,
            "[true,false,null,{},[],[{}],{\"a\":[1,{\"b\":null}]}]",
        ),
        (r#""just a string""#, "\"just a string\""),
        ("42", "42"),
        (r#" { "spaced" : [ 1 , 2 ] } "#, "{\"spaced\":[1,2]}"),
    ];

    #[test]
    fn matches_node_json_stringify() {
        for (input, want) in GOLDEN {
            let value: Value = serde_json::from_str(input).expect("golden input parses");
            assert_eq!(stringify(&value), *want, "input {input}");
            // Output is a fixed point, as in JS.
            assert!(is_js_canonical(want.as_bytes()), "{want}");
            assert_eq!(is_js_canonical(input.as_bytes()), input == want);
        }
    }

    #[test]
    fn spec_unstable_examples() {
        // §2.7: these change when forwarded live through a JSON peer.
        for bad in [
            &br#"{"b": 1, "a":2}"#[..],
            br#"{"t":1.0}"#,
            br#"{"2":1,"1":2}"#,
        ] {
            assert!(!is_js_canonical(bad));
        }
        assert!(!is_js_canonical(b"not json"));
        assert!(!is_js_canonical(b"\xff"));
        assert!(!is_js_canonical(b""));
    }

    #[test]
    fn numbers_built_in_rust() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (1e21, "1e+21"),
            (999999999999999900000.0, "999999999999999900000"),
            (1e-6, "0.000001"),
            (1.5e-6, "0.0000015"),
            (1e-7, "1e-7"),
            (123.456, "123.456"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (f64::EPSILON, "2.220446049250313e-16"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
        ];
        for (x, want) in cases {
            assert_eq!(number_to_string(*x), *want, "{x:e}");
        }
        let v = serde_json::json!([
            u64::MAX,
            i64::MIN,
            1u64 << 53,
            -(1i64 << 53),
            1461500000000u64
        ]);
        assert_eq!(
            stringify(&v),
            "[18446744073709552000,-9223372036854776000,9007199254740992,-9007199254740992,1461500000000]"
        );
    }

    #[test]
    fn chatwizard_message_from_a_struct() {
        #[derive(Serialize)]
        struct Line<'a> {
            time: u64,
            who: &'a str,
            message: &'a str,
        }
        let s = to_js_string(&Line {
            time: 1461500000000,
            who: "a1b2c3",
            message: "hello #nodeconflondon",
        })
        .expect("serializes");
        assert_eq!(
            s,
            r##"{"time":1461500000000,"who":"a1b2c3","message":"hello #nodeconflondon"}"##
        );
    }

    #[test]
    fn array_indices() {
        assert_eq!(array_index("0"), Some(0));
        assert_eq!(array_index("4294967294"), Some(4294967294));
        for k in [
            "",
            "00",
            "01",
            "4294967295",
            "99999999999",
            "-1",
            "1.0",
            "+1",
            " 1",
            "١",
        ] {
            assert_eq!(array_index(k), None, "{k:?}");
        }
    }
}
