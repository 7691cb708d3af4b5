//! Standard Webhooks signing (standardwebhooks.com): the HMAC key taken from the configured
//! secret, the delivery id, and the `v1,` signature; also the legacy `X-Bucket-AV-Signature`,
//! sent beside it for one release. Pure: no I/O and no clock.

use std::fmt;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::Report;
use bucket_av_core::Redacted;

/// How the spec writes a secret: this prefix, then the key bytes in base64.
pub const STANDARD_SECRET_PREFIX: &str = "whsec_";

/// Secrets are copied around by hand: accept base64 with or without its trailing `=`, as the
/// reference libraries do.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("--webhook-secret is empty: set a value or leave it unset to send unsigned reports")]
    Empty,
    #[error(
        "--webhook-secret starts with whsec_ but the rest is not base64 ({0}): give the secret exactly as the receiver issued it, or a plain value without the prefix"
    )]
    NotBase64(base64::DecodeError),
}

/// The HMAC-SHA256 key both signatures use.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// `whsec_<base64>` is a Standard Webhooks secret: the key is the decoded bytes. Any other
    /// value is a secret from before this scheme: the key is its UTF-8 bytes, as the legacy
    /// signature always used, so existing Secrets keep working and receivers verify with the
    /// reference libraries by giving them `whsec_` + base64 of that value.
    pub fn from_secret(secret: &Redacted) -> Result<Self, SecretError> {
        let value = secret.expose();
        let key = match value.strip_prefix(STANDARD_SECRET_PREFIX) {
            Some(encoded) => LENIENT_BASE64.decode(encoded).map_err(SecretError::NotBase64)?,
            None => value.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(key))
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// The `webhook-id` of a report: the same for every delivery of one verdict on one object
/// version, so a receiver that keeps the ids it has seen drops retries and redeliveries; a new
/// version, new bytes or a new verdict give a new id. It is derived rather than random because the
/// worker keeps no state between deliveries: a redelivered message, possibly on another worker,
/// must arrive at the same id. The version id tells versions apart on a versioned bucket (even of
/// identical bytes); the ETag tells contents apart where there is no version id. Fields are
/// length-prefixed so that no two different tuples hash the same bytes.
pub fn delivery_id(report: &Report) -> String {
    let mut hash = Sha256::new();
    for field in [
        report.bucket.as_str(),
        report.key.as_str(),
        report.version_id.as_deref().unwrap_or(""),
        report.etag.as_deref().unwrap_or(""),
        report.verdict.as_str(),
    ] {
        hash.update((field.len() as u64).to_be_bytes());
        hash.update(field.as_bytes());
    }
    // 128 bits keep collisions out of reach and the header short.
    format!("bavs_{}", hex::encode(&hash.finalize()[..16]))
}

/// `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, the spec's `webhook-signature`.
pub fn standard_signature(key: &SigningKey, id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = key.mac();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// `sha256=<hex HMAC-SHA256(key, "<timestamp>.<body>")>`: the `X-Bucket-AV-Signature` of earlier
/// releases, still sent so receivers can switch at their own pace (README, "Webhook").
pub fn legacy_signature(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
    let mut mac = key.mac();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Status;
    use crate::webhook::ActionTaken;
    use crate::webhook::tests::report;

    /// `whsec_` + base64 of `key`: what a receiver gives a Standard Webhooks library.
    fn standard_secret(key: &SigningKey) -> String {
        format!("{STANDARD_SECRET_PREFIX}{}", STANDARD.encode(&key.0))
    }

    fn key(secret: &str) -> SigningKey {
        SigningKey::from_secret(&Redacted::new(secret)).unwrap()
    }

    #[test]
    fn standard_signature_matches_the_specs_test_vector() {
        // The example secret, id, timestamp and payload of the Standard Webhooks test suites.
        let signature = standard_signature(
            &key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_plain_secret_signs_with_its_bytes_as_its_whsec_form_does() {
        let plain = key("s3cr3t-key");
        let standard = key(&standard_secret(&plain));
        assert_eq!(standard_secret(&plain), "whsec_czNjcjN0LWtleQ==");
        assert_eq!(plain, standard);
        // Computed with the reference Python library (standardwebhooks 1.1.0) from
        // Webhook("whsec_czNjcjN0LWtleQ==").sign("bavs_0123", 1700000000, '{"a":1}').
        assert_eq!(
            standard_signature(&plain, "bavs_0123", "1700000000", br#"{"a":1}"#),
            "v1,a9X0HZDkRo5RfmFy/8NB+EwsjfncUhTzcQ/6PIGkEiM="
        );
    }

    #[test]
    fn whsec_secrets_decode_with_or_without_padding() {
        assert_eq!(key("whsec_czNjcjN0LWtleQ"), key("s3cr3t-key"));
    }

    #[test]
    fn legacy_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
        let signature = legacy_signature(&key("key"), "1700000000", br#"{"a":1}"#);
        assert_eq!(signature, "sha256=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03");
    }

    #[test]
    fn bad_and_empty_secrets_are_refused() {
        let refused = |secret: &str| SigningKey::from_secret(&Redacted::new(secret)).unwrap_err();
        assert!(matches!(refused("whsec_not*base64"), SecretError::NotBase64(_)));
        assert_eq!(refused(""), SecretError::Empty);
        assert_eq!(refused("whsec_"), SecretError::Empty);
        assert!(refused("whsec_!!").to_string().contains("not base64"));
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        assert_eq!(format!("{:?}", key("s3cr3t-key")), "SigningKey(<redacted>)");
    }

    #[test]
    fn delivery_id_is_the_same_for_one_verdict_on_one_version() {
        let first = report(Some("v1"), Some("e1"), Status::Infected);
        let mut retry = first.clone();
        // A redelivery scans again: times and actions differ, the id must not.
        retry.scanned_at = "2026-01-01T00:05:00Z".into();
        retry.action = ActionTaken::Quarantined;
        retry.timings.scan_ms = 99;
        assert_eq!(delivery_id(&first), delivery_id(&retry));
        assert!(delivery_id(&first).starts_with("bavs_"));
        assert_eq!(delivery_id(&first).len(), "bavs_".len() + 32);
    }

    #[test]
    fn delivery_id_changes_with_the_verdict_version_bytes_and_object() {
        let id = |report: &Report| delivery_id(report);
        let base = report(Some("v1"), Some("e1"), Status::Infected);
        let others = [
            report(Some("v1"), Some("e1"), Status::Unscannable),
            report(Some("v2"), Some("e1"), Status::Infected),
            report(Some("v1"), Some("e2"), Status::Infected),
            report(None, Some("e1"), Status::Infected),
            Report { bucket: "other".into(), ..base.clone() },
            Report { key: "a/c.bin".into(), ..base.clone() },
        ];
        for other in &others {
            assert_ne!(id(&base), id(other), "{other:?}");
        }
        // Length prefixes: moving a character from one field to the next changes the id.
        let shifted = Report { bucket: "uploadsa".into(), key: "/b.bin".into(), ..base.clone() };
        assert_ne!(id(&Report { key: "a/b.bin".into(), ..base.clone() }), id(&shifted));
    }
}
