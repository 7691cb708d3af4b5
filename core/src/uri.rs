//! Percent-encoding for S3 object keys and query values, shared by everything that builds a
//! request URL or a copy source by hand.

/// Percent-encodes `value` as S3 and SigV4 expect: RFC 3986 unreserved characters (and the bytes
/// in `also_keep`, such as `/` in a path) stay, every other byte becomes `%XX`.
pub fn percent_encode(value: &str, also_keep: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) || also_keep.contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_unreserved_bytes_and_the_ones_asked_for() {
        assert_eq!(percent_encode("a b/c+d%e?✓", b"/"), "a%20b/c%2Bd%25e%3F%E2%9C%93");
        assert_eq!(percent_encode("a/b~c", b""), "a%2Fb~c");
    }
}
