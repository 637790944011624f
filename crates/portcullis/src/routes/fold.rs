//! What a Unicode-aware upstream makes of a path when it matches routes without regard to
//! case: Java's `equalsIgnoreCase` takes `ı` (dotless i) and `İ` for `i`, Go's `EqualFold`
//! and Python's `casefold` take `ſ` (long s) for `s` and `K` (Kelvin) for `k`, and
//! frameworks that normalise to NFKC take fullwidth `ａ` for `a` and `ﬀ` for `ff`. The
//! gateway compares prefixes in ASCII only, so it checks what such a path folds to.

use unicode_normalization::UnicodeNormalization;

/// Whether `path` holds a percent-encoded non-ASCII byte, once or twice encoded (`%C4`,
/// `%25C4`): raw non-ASCII never reaches a route, since it is not allowed in a URI.
pub fn has_encoded_non_ascii(path: &str) -> bool {
    encoded_non_ascii_at(path.as_bytes(), 1) || encoded_non_ascii_at(path.as_bytes(), 3)
}

/// Whether an escape of a byte ≥ 0x80 starts `offset` bytes after some `%` (1 for `%C4`,
/// 3 for `%25C4`).
fn encoded_non_ascii_at(path: &[u8], offset: usize) -> bool {
    path.iter().enumerate().any(|(i, byte)| {
        *byte == b'%'
            && (offset == 1 || path.get(i + 1..i + 3) == Some(b"25"))
            && path
                .get(i + offset)
                .is_some_and(|b| matches!(b, b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F'))
    })
}

/// The forms of `path` a lenient upstream may route on, with every non-ASCII character
/// that folds or normalises to ASCII replaced by that ASCII: once decoded, and with a
/// double encoding (`%25C4%25B1`) decoded too. Escapes of ASCII bytes stay as they are,
/// so that only Unicode folding, not `%2F`, changes what the path matches.
pub fn ascii_folded_forms(path: &str) -> [String; 2] {
    let double_decoded = path.replace("%25", "%");
    [
        fold(&decode_non_ascii(path)),
        fold(&decode_non_ascii(&double_decoded)),
    ]
}

/// Decodes the escapes of bytes ≥ 0x80 (keeping the rest), as text; invalid UTF-8 (which
/// hygiene refuses earlier) is replaced.
fn decode_non_ascii(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|byte| *byte >= 0x80);
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` with ASCII letters lowercased, each non-ASCII character replaced by the ASCII
/// it folds or normalises to, when there is such ASCII, and combining marks dropped (a
/// router that strips accents reads `i` + U+0307 as `i`).
fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_combining_mark(c) {
            continue;
        } else if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if let Some(ascii) = ascii_skeleton(c) {
            out.push_str(&ascii);
        } else {
            out.push(c);
        }
    }
    out
}

/// The ASCII that `c` becomes under NFKC and then lower- or upper-casing (with the
/// combining marks a full case mapping adds dropped, as `İ` lowercases to `i` + U+0307),
/// if any.
fn ascii_skeleton(c: char) -> Option<String> {
    let normalised: String = std::iter::once(c).nfkc().collect();
    let lower = normalised.to_lowercase();
    let upper_lower = normalised.to_uppercase().to_lowercase();
    [normalised, lower, upper_lower]
        .into_iter()
        .find_map(|form| {
            let kept: String = form.chars().filter(|c| !is_combining_mark(*c)).collect();
            (!kept.is_empty() && kept.is_ascii()).then(|| kept.to_ascii_lowercase())
        })
}

/// Whether `c` is a combining mark, which case mappings can leave behind and
/// accent-stripping routers drop.
fn is_combining_mark(c: char) -> bool {
    unicode_normalization::char::is_combining_mark(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_that_runtimes_fold_to_ascii_are_folded() {
        for (encoded, folded) in [
            ("/adm%C4%B1n", "/admin"),       // ı, dotless i: 'ı'.toUpperCase() is 'I'
            ("/%C4%B0NTERNAL", "/internal"), // İ, dotted capital I
            ("/%C5%BFecret", "/secret"),     // ſ, long s
            ("/%E2%84%AAeys", "/keys"),      // K, Kelvin sign
            ("/%EF%BD%81dmin", "/admin"),    // ａ, fullwidth a
            ("/sta%EF%AC%80", "/staff"),     // ﬀ ligature
            ("/ADM%25C4%25B1N", "/admin"),   // double-encoded ı
            ("/admi%CC%87n", "/admin"),      // i, then a combining dot above
        ] {
            assert!(has_encoded_non_ascii(encoded), "{encoded}");
            assert!(
                ascii_folded_forms(encoded).iter().any(|f| f == folded),
                "{encoded} -> {:?}",
                ascii_folded_forms(encoded)
            );
        }
    }

    #[test]
    fn other_characters_and_ascii_escapes_stay() {
        assert_eq!(ascii_folded_forms("/caf%C3%A9")[0], "/café");
        assert_eq!(ascii_folded_forms("/a%2Fb")[0], "/a%2fb");
        assert!(!has_encoded_non_ascii("/a%2Fb/100%25"));
        assert!(!has_encoded_non_ascii("/plain/path"));
    }
}
