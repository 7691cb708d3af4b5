//! What a scan found, and how clamd's reply text maps onto it. Pure: no I/O.

use std::fmt;

/// The result of scanning one object's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected {
        signature: String,
    },
    /// The bytes could not be judged; the object is neither clean nor known to be infected.
    Unscannable {
        reason: Unscannable,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unscannable {
    /// Over `--max-object-size`; never downloaded.
    TooLarge { size: u64, limit: u64 },
    /// Over clamd's StreamMaxLength.
    StreamLimit,
    /// clamd stopped early at one of its scan limits (file size, recursion, file count...).
    ScanLimit { heuristic: String },
    /// An encrypted archive or document whose content clamd cannot read.
    Encrypted { heuristic: String },
    /// The scan took longer than the scan timeout while clamd itself kept answering: the
    /// object's own doing (a decompression bomb, a huge archive), not an outage.
    ScanTimeout { seconds: u64 },
}

/// What an object is reported as: the kind of its verdict, or `Missing` when it was gone before
/// its scan. Its text is the `<prefix>status` tag, the report's `verdict` and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Clean,
    Infected,
    Unscannable,
    Missing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Infected => "infected",
            Self::Unscannable => "unscannable",
            Self::Missing => "missing",
        }
    }

    /// The status a `<prefix>status` tag names. `None` for anything else: a tag is user-writable
    /// data, not a verdict this worker computed.
    pub fn from_tag(value: &str) -> Option<Self> {
        [Self::Clean, Self::Infected, Self::Unscannable].into_iter().find(|status| status.as_str() == value)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Verdict {
    /// The verdict's kind: `Clean`, `Infected` or `Unscannable`.
    pub fn status(&self) -> Status {
        match self {
            Self::Clean => Status::Clean,
            Self::Infected { .. } => Status::Infected,
            Self::Unscannable { .. } => Status::Unscannable,
        }
    }

    /// The signature name or the reason, for tags and reports; `None` when clean.
    pub fn detail(&self) -> Option<String> {
        match self {
            Self::Clean => None,
            Self::Infected { signature } => Some(signature.clone()),
            Self::Unscannable { reason } => Some(reason.to_string()),
        }
    }
}

impl fmt::Display for Unscannable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { size, limit } => write!(f, "too-large: {size} bytes over the {limit} byte limit"),
            Self::StreamLimit => f.write_str("too-large: over clamd StreamMaxLength"),
            Self::ScanLimit { heuristic } => write!(f, "scan-limit: {heuristic}"),
            Self::Encrypted { heuristic } => write!(f, "encrypted: {heuristic}"),
            Self::ScanTimeout { seconds } => write!(f, "scan-timeout: not scanned within {seconds} s"),
        }
    }
}

/// clamd answered, but not with a verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("clamd answered with an error: {0}")]
pub struct ClamdReplyError(pub String);

/// Maps an INSTREAM reply to a verdict. `Heuristics.Limits.Exceeded.*` and
/// `Heuristics.Encrypted.*` come from `AlertExceedsMax` / `AlertEncrypted`: they say clamd could
/// not see everything, not that it found malware, so they are unscannable rather than infected.
pub fn parse_instream_reply(reply: &str) -> Result<Verdict, ClamdReplyError> {
    if reply.contains("size limit exceeded") {
        return Ok(Verdict::Unscannable { reason: Unscannable::StreamLimit });
    }
    let body = reply.strip_prefix("stream:").map(str::trim).unwrap_or(reply);
    if body == "OK" {
        return Ok(Verdict::Clean);
    }
    if let Some(signature) = body.strip_suffix(" FOUND") {
        let signature = signature.trim().to_owned();
        let bare = signature.trim_end_matches(".UNOFFICIAL");
        return Ok(if bare.starts_with("Heuristics.Limits.Exceeded") {
            Verdict::Unscannable { reason: Unscannable::ScanLimit { heuristic: signature } }
        } else if bare.starts_with("Heuristics.Encrypted") {
            Verdict::Unscannable { reason: Unscannable::Encrypted { heuristic: signature } }
        } else {
            Verdict::Infected { signature }
        });
    }
    Err(ClamdReplyError(reply.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamd_replies_map_to_verdicts() {
        assert_eq!(parse_instream_reply("stream: OK"), Ok(Verdict::Clean));
        assert_eq!(
            parse_instream_reply("stream: Eicar-Test-Signature.UNOFFICIAL FOUND"),
            Ok(Verdict::Infected { signature: "Eicar-Test-Signature.UNOFFICIAL".into() })
        );
        assert_eq!(
            parse_instream_reply("INSTREAM size limit exceeded. ERROR"),
            Ok(Verdict::Unscannable { reason: Unscannable::StreamLimit })
        );
        assert_eq!(
            parse_instream_reply("stream: Heuristics.Limits.Exceeded.MaxRecursion FOUND").unwrap().status(),
            Status::Unscannable
        );
        assert!(matches!(
            parse_instream_reply("stream: Heuristics.Encrypted.Zip FOUND"),
            Ok(Verdict::Unscannable { reason: Unscannable::Encrypted { .. } })
        ));
        assert_eq!(
            parse_instream_reply("stream: Can't allocate memory ERROR"),
            Err(ClamdReplyError("stream: Can't allocate memory ERROR".into()))
        );
    }

    #[test]
    fn details_name_the_signature_or_reason() {
        assert_eq!(Verdict::Clean.detail(), None);
        let too_large = Verdict::Unscannable { reason: Unscannable::TooLarge { size: 10, limit: 5 } };
        assert_eq!(too_large.detail().unwrap(), "too-large: 10 bytes over the 5 byte limit");
    }

    #[test]
    fn a_status_reads_the_same_in_tags_reports_and_metrics() {
        for status in [Status::Clean, Status::Infected, Status::Unscannable, Status::Missing] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(Status::from_tag("infected"), Some(Status::Infected));
        // `missing` is reported, never written as a tag; a forged or mistyped tag names nothing.
        assert_eq!(Status::from_tag("missing"), None);
        assert_eq!(Status::from_tag("Clean"), None);
    }
}
