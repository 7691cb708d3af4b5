//! Kubernetes label syntax, checked as the API server checks it, for what the operator and the
//! external metrics API refuse with their own message before the API server would.

/// A label value: empty, or at most 63 of `[A-Za-z0-9_.-]` starting and ending alphanumeric.
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() <= 63
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS subdomain (RFC 1123): at most 253 characters, dot-separated labels of 1 to 63 lowercase
/// alphanumerics and `-`, neither starting nor ending with `-`.
pub fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    (1..=253).contains(&name.len()) && name.split('.').all(label_ok)
}

/// A label or annotation key: an optional DNS-subdomain prefix and `/`, then a non-empty name of
/// label-value syntax.
pub fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_syntax_is_the_api_servers() {
        assert!(is_label_value("") && is_label_value("a") && is_label_value("v1.2_3-x"));
        assert!(
            !is_label_value("-a")
                && !is_label_value("a.")
                && !is_label_value("a b")
                && !is_label_value(&"a".repeat(64))
        );
        assert!(is_dns_subdomain("example.com") && is_dns_subdomain("a-b.c"));
        assert!(
            !is_dns_subdomain("")
                && !is_dns_subdomain("A.com")
                && !is_dns_subdomain("a..b")
                && !is_dns_subdomain("-a.b")
        );
        assert!(is_qualified_name("app.kubernetes.io/name") && is_qualified_name("team"));
        assert!(!is_qualified_name("example.com/") && !is_qualified_name("/name") && !is_qualified_name("a/b/c"));
        assert!(!is_qualified_name("Example.com/name") && !is_qualified_name(""));
    }
}
