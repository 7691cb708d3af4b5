//! Where the operator may send RabbitMQ's credentials to read the management API: only to the
//! host the AMQP URL in the policy's Secret names, and only over https unless the operator was
//! started with `--allow-plain-http-management`. `rabbitmq.managementUrl` is a plain spec field,
//! writable by whoever may edit the policy, and the credentials come from a Secret that person
//! may not be allowed to read: without this rule, pointing the URL at their own server would
//! hand them the credentials. Pure: nothing here connects anywhere.

/// Why the operator refuses to send the credentials to a management URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ManagementUrlError {
    #[error("rabbitmq.managementUrl {url} is not a URL with a host: set it to https://<host of the AMQP URL>:<port>")]
    NotAUrl { url: String },
    #[error(
        "rabbitmq.managementUrl names host {management_host}, but the AMQP URL in the policy's rabbitmq.urlSecret \
         names host {amqp_host}: the operator sends that URL's credentials only to the host it names, so set \
         managementUrl to a URL on {amqp_host} (or change the URL in the Secret)"
    )]
    OtherHost { management_host: String, amqp_host: String },
    #[error(
        "rabbitmq.managementUrl {url} is plain http, which would send the RabbitMQ credentials unencrypted: use \
         https, or start the operator with --allow-plain-http-management (chart value \
         operator.allowPlainHttpManagement) where the network is trusted"
    )]
    PlainHttp { url: String },
    #[error("the AMQP URL in the policy's rabbitmq.urlSecret: {reason}")]
    BadAmqpUrl { reason: String },
}

impl ManagementUrlError {
    /// The condition reason and metric label.
    pub(crate) fn kind(&self) -> &'static str {
        "ManagementUrlRefused"
    }
}

/// Checks that `management_url` may receive the credentials of `amqp_url`: same host (ports may
/// differ: 5672 and 15672), https unless `allow_plain_http`.
pub(crate) fn check(management_url: &str, amqp_url: &str, allow_plain_http: bool) -> Result<(), ManagementUrlError> {
    let parsed = reqwest::Url::parse(management_url)
        .ok()
        .filter(|url| url.host_str().is_some_and(|host| !host.is_empty()))
        .ok_or_else(|| ManagementUrlError::NotAUrl { url: management_url.to_owned() })?;
    // lapin's own parser, as for the credentials themselves; its error never holds the URL.
    let amqp: lapin::uri::AMQPUri = amqp_url
        .parse()
        .map_err(|_| ManagementUrlError::BadAmqpUrl { reason: "not a valid amqp:// or amqps:// URL".into() })?;
    let management_host = normalize_host(parsed.host_str().unwrap_or_default());
    let amqp_host = normalize_host(&amqp.authority.host);
    if management_host != amqp_host {
        return Err(ManagementUrlError::OtherHost { management_host, amqp_host });
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_plain_http => Ok(()),
        "http" => Err(ManagementUrlError::PlainHttp { url: management_url.to_owned() }),
        _ => Err(ManagementUrlError::NotAUrl { url: management_url.to_owned() }),
    }
}

/// Hosts compare without case, brackets of IPv6 literals or a trailing dot.
fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMQP: &str = "amqp://scanner:s3cret@rabbitmq.rabbitmq.svc:5672/%2f";

    #[test]
    fn the_credentials_go_to_the_host_of_the_amqp_url_over_https() {
        assert_eq!(check("https://rabbitmq.rabbitmq.svc:15671", AMQP, false), Ok(()));
        assert_eq!(check("https://RabbitMQ.rabbitmq.svc./admin/", AMQP, false), Ok(()));
        assert_eq!(check("http://rabbitmq.rabbitmq.svc:15672", AMQP, true), Ok(()));
    }

    #[test]
    fn another_host_never_gets_the_credentials_even_with_plain_http_allowed() {
        let error = check("https://collector.example:443", AMQP, true).unwrap_err();
        assert_eq!(
            error,
            ManagementUrlError::OtherHost {
                management_host: "collector.example".into(),
                amqp_host: "rabbitmq.rabbitmq.svc".into()
            }
        );
        // Userinfo in the management URL does not disguise the host.
        let error = check("https://rabbitmq.rabbitmq.svc@collector.example/", AMQP, true).unwrap_err();
        assert!(matches!(error, ManagementUrlError::OtherHost { .. }), "{error:?}");
        assert!(!error.to_string().contains("s3cret"));
    }

    #[test]
    fn plain_http_needs_the_operator_flag_and_the_error_says_so() {
        let error = check("http://rabbitmq.rabbitmq.svc:15672", AMQP, false).unwrap_err();
        assert!(error.to_string().contains("--allow-plain-http-management"), "{error}");
        assert!(matches!(check("ftp://rabbitmq.rabbitmq.svc", AMQP, true), Err(ManagementUrlError::NotAUrl { .. })));
        assert!(matches!(check("not a url", AMQP, true), Err(ManagementUrlError::NotAUrl { .. })));
        let bad = check("https://rabbitmq.rabbitmq.svc", "http://u:secret@x", false).unwrap_err();
        assert!(matches!(bad, ManagementUrlError::BadAmqpUrl { .. }) && !bad.to_string().contains("secret"));
    }
}
