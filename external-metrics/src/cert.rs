//! The server's own TLS identity: a certificate chain and key, either read from PEM (e.g. a
//! cert-manager Secret mounted as files) or generated at start, with the CA bundle the
//! APIService's `caBundle` must hold so the aggregator can verify the server without
//! `insecureSkipTLSVerify`. Never logs or prints the key.

use std::fmt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::Error;

/// A serving certificate chain (leaf first), its key, and the CA bundle clients should trust.
pub struct ServingCert {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    ca_bundle_pem: Option<String>,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .field("ca_bundle_pem", &self.ca_bundle_pem.is_some())
            .finish()
    }
}

impl Clone for ServingCert {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key(), ca_bundle_pem: self.ca_bundle_pem.clone() }
    }
}

/// The names the aggregator and in-cluster clients use for a Service: the aggregator verifies the
/// server as `<service>.<namespace>.svc`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ]
}

/// A throwaway CA and a leaf signed by it, in PEM, for storing (e.g. in a Secret that every
/// replica of the operator serves from, so that they share one CA). See
/// [`ServingCert::self_signed`].
#[derive(Clone)]
pub struct SelfSignedPem {
    /// The leaf, then the CA.
    pub cert_chain: String,
    pub key: String,
    pub ca: String,
}

impl fmt::Debug for SelfSignedPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelfSignedPem").field("key", &"<redacted>").finish_non_exhaustive()
    }
}

impl SelfSignedPem {
    /// A CA and a leaf for `names` (DNS names or IP addresses), valid from an hour ago for
    /// `days`. The CA's key is dropped at once: nothing else can be signed with it.
    pub fn generate(names: &[String], days: i64) -> Result<Self, Error> {
        let generate = |error: rcgen::Error| Error::GenerateCertificate(error);
        let now = OffsetDateTime::now_utc();
        let not_before = now - Duration::hours(1);
        let not_after = now + Duration::days(days);

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("bucket-av-external-metrics-ca@{}", now.unix_timestamp()));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca_params.not_before = not_before;
        ca_params.not_after = not_after;
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(generate)?).map_err(generate)?;

        let mut leaf_params = CertificateParams::new(names.to_vec()).map_err(generate)?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, names.first().map_or("bucket-av-external-metrics", String::as_str));
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.not_before = not_before;
        leaf_params.not_after = not_after;
        let leaf_key = KeyPair::generate().map_err(generate)?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(generate)?;
        Ok(Self { cert_chain: format!("{}{}", leaf.pem(), ca.pem()), key: leaf_key.serialize_pem(), ca: ca.pem() })
    }
}

impl ServingCert {
    /// Generates a throwaway CA and a leaf signed by it for `names` (DNS names or IP addresses),
    /// valid from an hour ago for a year. The CA's key is dropped at once: nothing else can be
    /// signed with it. Each call (each process start) makes a new CA, so the APIService's
    /// `caBundle` must be updated with [`ca_bundle_pem`](Self::ca_bundle_pem) after every start,
    /// and replicas behind one Service must share a certificate from files instead.
    pub fn self_signed(names: &[String]) -> Result<Self, Error> {
        let pem = SelfSignedPem::generate(names, 365)?;
        Self::from_pem(&pem.cert_chain, &pem.key, Some(pem.ca))
    }

    /// [`self_signed`](Self::self_signed) for the names of a Service (see [`service_dns_names`]),
    /// plus `localhost` and `127.0.0.1` for local clients.
    pub fn self_signed_for_service(service: &str, namespace: &str) -> Result<Self, Error> {
        let mut names = service_dns_names(service, namespace);
        names.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
        Self::self_signed(&names)
    }

    /// A chain (leaf first) and a PKCS#8, PKCS#1 or SEC1 key in PEM. `ca_bundle_pem` is what the
    /// APIService should trust, when the caller knows it (e.g. `ca.crt` of a cert-manager Secret).
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_bundle_pem: Option<String>) -> Result<Self, Error> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Error::ServingCertificate(format!("certificate PEM: {error}")))?;
        if chain.is_empty() {
            return Err(Error::ServingCertificate("the certificate PEM holds no certificate".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|error| Error::ServingCertificate(format!("private key PEM: {error}")))?;
        Ok(Self { chain, key, ca_bundle_pem })
    }

    /// [`from_pem`](Self::from_pem) from files, such as `tls.crt`, `tls.key` and `ca.crt` of a
    /// mounted Secret. Read once: restart to pick up a renewed certificate.
    pub fn from_pem_files(cert: &Path, key: &Path, ca_bundle: Option<&Path>) -> Result<Self, Error> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|source| Error::ReadCertificateFile { path: path.display().to_string(), source })
        };
        let ca_bundle_pem = ca_bundle.map(read).transpose()?;
        Self::from_pem(&read(cert)?, &read(key)?, ca_bundle_pem)
    }

    /// The PEM the APIService's `caBundle` should hold, when known.
    pub fn ca_bundle_pem(&self) -> Option<&str> {
        self.ca_bundle_pem.as_deref()
    }

    /// The leaf certificate in DER.
    pub fn leaf_der(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_leaf_has_the_service_names_and_a_separate_ca() {
        let cert = ServingCert::self_signed_for_service("bucket-av-metrics", "bucket-av").expect("generate");
        assert_eq!(cert.chain.len(), 2);
        let (_, leaf) = x509_parser::parse_x509_certificate(cert.leaf_der()).expect("leaf");
        let names: Vec<String> = leaf
            .subject_alternative_name()
            .expect("san")
            .expect("san present")
            .value
            .general_names
            .iter()
            .map(|name| name.to_string())
            .collect();
        for expected in ["bucket-av-metrics.bucket-av.svc", "localhost"] {
            assert!(names.iter().any(|name| name.contains(expected)), "{expected} in {names:?}");
        }
        assert!(!leaf.is_ca());
        let ca_pem = cert.ca_bundle_pem().expect("ca bundle");
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca pem");
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).expect("ca");
        assert!(ca.is_ca());
        assert_eq!(leaf.issuer(), ca.subject());
        assert!(!format!("{cert:?}").contains("BEGIN"), "Debug must not print key material");
    }

    #[test]
    fn pem_round_trip_keeps_chain_and_key() {
        let key = KeyPair::generate().expect("key");
        let certificate = CertificateParams::new(vec!["x.example".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed");
        let cert = ServingCert::from_pem(&certificate.pem(), &key.serialize_pem(), None).expect("from pem");
        assert_eq!(cert.leaf_der(), certificate.der());
        assert_eq!(cert.ca_bundle_pem(), None);
        assert!(matches!(ServingCert::from_pem("", &key.serialize_pem(), None), Err(Error::ServingCertificate(_))));
        assert!(matches!(ServingCert::from_pem(&certificate.pem(), "", None), Err(Error::ServingCertificate(_))));
    }
}
