//! Authentication of the only client this server accepts: the kube-apiserver's aggregator
//! (front proxy). Reads the request-header settings the cluster publishes in ConfigMap
//! `kube-system/extension-apiserver-authentication`, turns them into a TLS client-certificate
//! verifier (CA chain, then the allowed common names), and reads the user the aggregator vouches
//! for from the request headers. It must not trust those headers from any other client: that is
//! why the verifier refuses every connection without an allowed certificate.
//!
//! ## Where refusals happen
//! Everything is decided in the TLS handshake, before any HTTP is read:
//! - no client certificate: alert `certificate_required` (TLS 1.3) / `handshake_failure`;
//! - a certificate that does not chain to `requestheader-client-ca-file` (another CA, expired,
//!   wrong key usage): alert `unknown_ca` / `bad_certificate` / `certificate_expired`;
//! - a certificate from that CA whose subject CN is not in a non-empty
//!   `requestheader-allowed-names`: alert `access_denied`.
//!
//! So a refused client never gets an HTTP status: it sees a TLS error. Refusing in the handshake
//! (rather than answering 401/403) means nothing of the HTTP stack, header parsing or the metric
//! source is reachable without the aggregator's credentials, and the `X-Remote-*` headers are only
//! ever read from a connection that proved to be the aggregator. Kubernetes' own extension servers
//! also accept client certificates of the cluster's `client-ca-file` and bearer tokens for direct
//! access; this one deliberately does not: only the aggregator talks to it.
//!
//! ## No SubjectAccessReview
//! The kube-apiserver authenticates and authorizes every request (RBAC `get` on
//! `external.metrics.k8s.io` for the HPA's service account) *before* it proxies it here, and no one
//! but that proxy can connect. A SubjectAccessReview per request would repeat the same RBAC check,
//! add an API round trip to every HPA sync, need the `system:auth-delegator` ClusterRole, and turn
//! an API server hiccup into a failed metric read. The identity is logged instead.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use hyper::HeaderMap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tracing::warn;

/// The ConfigMap kube-apiserver publishes its client-authentication settings in.
pub const AUTHENTICATION_CONFIG_MAP_NAMESPACE: &str = "kube-system";
pub const AUTHENTICATION_CONFIG_MAP_NAME: &str = "extension-apiserver-authentication";

/// The request-header (front proxy) settings of a cluster, from its authentication ConfigMap.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    /// PEM of the CA(s) that sign the aggregator's client certificate.
    pub client_ca_pem: String,
    /// Subject common names allowed to act as the front proxy; empty allows any from the CA.
    pub allowed_names: Vec<String>,
    /// Headers carrying the user name, first non-empty wins (`X-Remote-User`).
    pub username_headers: Vec<String>,
    /// Headers carrying groups, all values (`X-Remote-Group`).
    pub group_headers: Vec<String>,
    /// Prefixes of headers carrying extra attributes (`X-Remote-Extra-`).
    pub extra_headers_prefixes: Vec<String>,
    /// Headers carrying the user's UID (`X-Remote-Uid`, published since Kubernetes 1.32).
    pub uid_headers: Vec<String>,
}

impl fmt::Debug for RequestHeaderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestHeaderConfig")
            .field("client_ca_certificates", &CertificateDer::pem_slice_iter(self.client_ca_pem.as_bytes()).count())
            .field("allowed_names", &self.allowed_names)
            .field("username_headers", &self.username_headers)
            .field("group_headers", &self.group_headers)
            .field("extra_headers_prefixes", &self.extra_headers_prefixes)
            .field("uid_headers", &self.uid_headers)
            .finish()
    }
}

impl RequestHeaderConfig {
    /// Reads the `requestheader-*` keys of the ConfigMap's `data`. Fails when there is no
    /// request-header CA (the API server then runs without an aggregation layer).
    pub fn from_config_map_data(data: &BTreeMap<String, String>) -> Result<Self, String> {
        let client_ca_pem = data
            .get("requestheader-client-ca-file")
            .filter(|pem| !pem.trim().is_empty())
            .ok_or(
                "it has no requestheader-client-ca-file: start kube-apiserver with --requestheader-client-ca-file \
                 (the aggregation layer is not configured)",
            )?
            .clone();
        let certificates = CertificateDer::pem_slice_iter(client_ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("its requestheader-client-ca-file is not PEM: {error}"))?;
        if certificates.is_empty() {
            return Err("its requestheader-client-ca-file holds no certificate".to_owned());
        }
        let list = |key: &str| -> Result<Vec<String>, String> {
            match data.get(key).map(|value| value.trim()) {
                None | Some("") => Ok(Vec::new()),
                Some(json) => serde_json::from_str::<Vec<String>>(json)
                    .map_err(|error| format!("its {key} is not a JSON list of strings: {error}")),
            }
        };
        Ok(Self {
            client_ca_pem,
            allowed_names: list("requestheader-allowed-names")?,
            username_headers: list("requestheader-username-headers")?,
            group_headers: list("requestheader-group-headers")?,
            extra_headers_prefixes: list("requestheader-extra-headers-prefix")?,
            uid_headers: list("requestheader-uid-headers")?,
        })
    }

    /// Whether a client certificate with this subject CN may act as the front proxy.
    pub fn is_allowed_name(&self, common_name: Option<&str>) -> bool {
        name_allowed(&self.allowed_names, common_name)
    }

    /// A verifier that requires a client certificate chaining to the request-header CA and, when
    /// names are listed, one of the allowed CNs.
    pub fn client_verifier(&self, provider: Arc<CryptoProvider>) -> Result<Arc<dyn ClientCertVerifier>, String> {
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(self.client_ca_pem.as_bytes()) {
            let certificate = certificate.map_err(|error| format!("requestheader-client-ca-file: {error}"))?;
            roots.add(certificate).map_err(|error| format!("requestheader-client-ca-file: {error}"))?;
        }
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|error| format!("client certificate verifier: {error}"))?;
        Ok(Arc::new(AllowedNamesVerifier { inner, allowed_names: self.allowed_names.clone() }))
    }

    /// The user the aggregator forwards the request for. A request without a user header is
    /// still the aggregator's (its availability probes send none) and gets `user: None`.
    pub fn remote_identity(&self, headers: &HeaderMap) -> RemoteIdentity {
        let values = |name: &String| {
            headers.get_all(name.as_str()).into_iter().filter_map(|value| value.to_str().ok()).map(str::to_owned)
        };
        let user = self.username_headers.iter().flat_map(values).find(|user| !user.is_empty());
        let uid = self.uid_headers.iter().flat_map(values).find(|uid| !uid.is_empty());
        let groups = self.group_headers.iter().flat_map(values).collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            let Some(key) = self.extra_headers_prefixes.iter().find_map(|prefix| {
                let prefix = prefix.to_ascii_lowercase();
                name.as_str().strip_prefix(prefix.as_str()).map(str::to_owned)
            }) else {
                continue;
            };
            if let Ok(value) = value.to_str() {
                extra.entry(key).or_default().push(value.to_owned());
            }
        }
        RemoteIdentity { user, uid, groups, extra }
    }
}

/// Who the aggregator says is asking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteIdentity {
    pub user: Option<String>,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    /// Extra attributes by (lowercase, still percent-encoded) key.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The subject CN of a DER certificate, if it has one.
pub fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    parsed.subject().iter_common_name().next().and_then(|name| name.as_str().ok()).map(str::to_owned)
}

fn name_allowed(allowed_names: &[String], common_name: Option<&str>) -> bool {
    allowed_names.is_empty() || common_name.is_some_and(|name| allowed_names.iter().any(|allowed| allowed == name))
}

/// WebPKI chain verification, then the allowed-names check of the request-header authenticator.
#[derive(Debug)]
struct AllowedNamesVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed_names: Vec<String>,
}

impl ClientCertVerifier for AllowedNamesVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed_names.is_empty() {
            return Ok(verified);
        }
        let name = common_name(end_entity);
        if name_allowed(&self.allowed_names, name.as_deref()) {
            Ok(verified)
        } else {
            warn!(
                common_name = name.as_deref().unwrap_or(""),
                allowed = ?self.allowed_names,
                "refused a client certificate from the request-header CA: its CN is not in requestheader-allowed-names"
            );
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::{HeaderName, HeaderValue};

    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("self-signed").pem()
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn cluster_data(ca: &str) -> BTreeMap<String, String> {
        data(&[
            ("client-ca-file", ca),
            ("requestheader-client-ca-file", ca),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
            ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
            ("requestheader-extra-headers-prefix", r#"["X-Remote-Extra-"]"#),
            ("requestheader-uid-headers", r#"["X-Remote-Uid"]"#),
        ])
    }

    #[test]
    fn reads_the_settings_kube_apiserver_publishes() {
        let ca = ca_pem();
        let config = RequestHeaderConfig::from_config_map_data(&cluster_data(&ca)).expect("valid");
        assert_eq!(config.client_ca_pem, ca);
        assert_eq!(config.allowed_names, ["front-proxy-client"]);
        assert_eq!(config.username_headers, ["X-Remote-User"]);
        assert_eq!(config.group_headers, ["X-Remote-Group"]);
        assert_eq!(config.extra_headers_prefixes, ["X-Remote-Extra-"]);
        assert_eq!(config.uid_headers, ["X-Remote-Uid"]);
        assert!(format!("{config:?}").contains("client_ca_certificates: 1"));
    }

    #[test]
    fn missing_lists_are_empty_and_a_missing_ca_is_an_error() {
        let ca = ca_pem();
        let config =
            RequestHeaderConfig::from_config_map_data(&data(&[("requestheader-client-ca-file", &ca)])).expect("valid");
        assert!(config.allowed_names.is_empty() && config.username_headers.is_empty());
        let error = RequestHeaderConfig::from_config_map_data(&data(&[("client-ca-file", &ca)])).expect_err("no CA");
        assert!(error.contains("--requestheader-client-ca-file"), "{error}");
        let error = RequestHeaderConfig::from_config_map_data(&data(&[("requestheader-client-ca-file", "junk")]))
            .expect_err("no certificate");
        assert!(error.contains("no certificate"), "{error}");
        let mut bad_list = cluster_data(&ca);
        bad_list.insert("requestheader-allowed-names".to_owned(), "front-proxy-client".to_owned());
        let error = RequestHeaderConfig::from_config_map_data(&bad_list).expect_err("not JSON");
        assert!(error.contains("requestheader-allowed-names is not a JSON list"), "{error}");
    }

    #[test]
    fn allowed_names_check_the_common_name_only_when_listed() {
        let ca = ca_pem();
        let mut config = RequestHeaderConfig::from_config_map_data(&cluster_data(&ca)).expect("valid");
        assert!(config.is_allowed_name(Some("front-proxy-client")));
        assert!(!config.is_allowed_name(Some("front-proxy-client2")));
        assert!(!config.is_allowed_name(Some("")));
        assert!(!config.is_allowed_name(None));
        config.allowed_names.clear();
        assert!(config.is_allowed_name(Some("anyone")));
        assert!(config.is_allowed_name(None));
    }

    #[test]
    fn remote_identity_comes_from_the_configured_headers() {
        let config = RequestHeaderConfig::from_config_map_data(&cluster_data(&ca_pem())).expect("valid");
        let mut headers = HeaderMap::new();
        let mut add = |name: &str, value: &str| {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        };
        add("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler");
        add("X-Remote-Group", "system:serviceaccounts");
        add("X-Remote-Group", "system:authenticated");
        add("X-Remote-Uid", "1234");
        add("X-Remote-Extra-Authentication.kubernetes.io%2fcredential-id", "JTI=abc");
        add("X-Other", "ignored");
        let identity = config.remote_identity(&headers);
        assert_eq!(identity.user.as_deref(), Some("system:serviceaccount:kube-system:horizontal-pod-autoscaler"));
        assert_eq!(identity.uid.as_deref(), Some("1234"));
        assert_eq!(identity.groups, ["system:serviceaccounts", "system:authenticated"]);
        assert_eq!(
            identity.extra,
            BTreeMap::from([("authentication.kubernetes.io%2fcredential-id".to_owned(), vec!["JTI=abc".to_owned()])])
        );
        assert_eq!(config.remote_identity(&HeaderMap::new()), RemoteIdentity::default());
    }

    #[test]
    fn common_name_is_read_from_the_subject() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "front-proxy-client");
        let certificate = params.self_signed(&key).expect("self-signed");
        assert_eq!(common_name(certificate.der()).as_deref(), Some("front-proxy-client"));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "no-cn");
        assert_eq!(common_name(params.self_signed(&key).expect("self-signed").der()), None);
    }
}
