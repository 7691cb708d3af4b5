//! The webhook URL as errors and logs show it: scheme, host, port and path, without the userinfo
//! and without query values, which is where receivers put their access tokens. Pure.

use reqwest::Url;

const HIDDEN: &str = "<redacted>";

/// `https://user:pw@hooks.example:8443/in?token=abc&v=2#x` -> `https://hooks.example:8443/in?token=<redacted>&v=<redacted>`.
/// Query names stay (they tell which parameter is wrong); a query item without a name may itself
/// be the token and goes whole. The fragment is never sent, so it is dropped too.
pub fn redact_url(url: &Url) -> String {
    let mut shown = format!("{}://", url.scheme());
    if let Some(host) = url.host_str() {
        shown.push_str(host);
    }
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if let Some(query) = url.query() {
        let items: Vec<String> = query
            .split('&')
            .filter(|item| !item.is_empty())
            .map(|item| match item.split_once('=') {
                Some((name, _)) if !name.is_empty() => format!("{name}={HIDDEN}"),
                _ => HIDDEN.to_owned(),
            })
            .collect();
        if !items.is_empty() {
            shown.push('?');
            shown.push_str(&items.join("&"));
        }
    }
    shown
}

/// A redirect's `Location` (absolute, or relative to `base`), redacted the same way.
pub fn redact_location(base: &Url, location: &str) -> String {
    match base.join(location) {
        Ok(target) => redact_url(&target),
        Err(_) => "an address that is not a URL".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(url: &str) -> String {
        redact_url(&Url::parse(url).unwrap())
    }

    #[test]
    fn userinfo_query_values_and_fragment_are_dropped() {
        assert_eq!(
            shown("https://user:pa55@hooks.example:8443/in/av?token=abc123&v=2#frag"),
            "https://hooks.example:8443/in/av?token=<redacted>&v=<redacted>"
        );
    }

    #[test]
    fn urls_without_secrets_are_shown_as_they_are() {
        assert_eq!(shown("http://127.0.0.1:8080/hook"), "http://127.0.0.1:8080/hook");
        assert_eq!(shown("https://hooks.example"), "https://hooks.example/");
        assert_eq!(shown("http://[::1]:9000/h"), "http://[::1]:9000/h");
    }

    #[test]
    fn a_query_item_without_a_name_is_hidden_whole() {
        assert_eq!(
            shown("https://h.example/in?s3cr3t&&=x&a="),
            "https://h.example/in?<redacted>&<redacted>&a=<redacted>"
        );
        assert_eq!(shown("https://h.example/in?"), "https://h.example/in");
    }

    #[test]
    fn the_default_port_is_not_repeated() {
        assert_eq!(shown("https://user@h.example:443/x"), "https://h.example/x");
    }

    #[test]
    fn locations_resolve_against_the_webhook_url_before_redaction() {
        let base = Url::parse("https://h.example/in?token=abc").unwrap();
        assert_eq!(redact_location(&base, "/moved?token=new"), "https://h.example/moved?token=<redacted>");
        assert_eq!(
            redact_location(&base, "https://u:p@other.example/final?k=v"),
            "https://other.example/final?k=<redacted>"
        );
        assert_eq!(redact_location(&base, "http://[bad"), "an address that is not a URL");
    }
}
