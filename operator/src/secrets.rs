//! Reads the Secrets and ConfigMaps a policy refers to, with errors that name the object and key
//! ("secret minio-creds has no key accessKey"). Values are returned as `Secret` so they never
//! reach a log line; nothing here writes to the API server.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bucket_av_core::Redacted;
use bucket_av_crds::{BucketScanPolicy, CaBundleRef, CaBundleSource};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use sha2::{Digest, Sha256};

/// Why a Secret or ConfigMap the policy refers to cannot be read: the dereference step's error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReferenceError {
    #[error("read {kind} {namespace}/{name}: {}", crate::error::api_message(.source))]
    ReadReference {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{kind} {name} does not exist in namespace {namespace}: create it or fix the reference in the policy")]
    ReferenceMissing { kind: &'static str, namespace: String, name: String },
    #[error("{kind} {name} has no key {key}: add it or set the key the policy reads")]
    ReferenceKeyMissing { kind: &'static str, name: String, key: String },
    #[error("{kind} {name} key {key} is not UTF-8 text")]
    ReferenceNotText { kind: &'static str, name: String, key: String },
    #[error("write CA bundle to {path}: {source}")]
    WriteCaBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ReferenceError {
    /// The condition reason and metric label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::ReadReference { .. } => "ReadReference",
            Self::ReferenceMissing { .. } => "ReferenceMissing",
            Self::ReferenceKeyMissing { .. } => "ReferenceKeyMissing",
            Self::ReferenceNotText { .. } => "ReferenceNotText",
            Self::WriteCaBundle { .. } => "WriteCaBundle",
        }
    }
}

type Result<T, E = ReferenceError> = std::result::Result<T, E>;

/// The names of every Secret the policy refers to: a change to any of them must trigger a
/// reconcile (and a rollout of the workers, which read them as environment variables).
pub(crate) fn referenced_secrets(policy: &BucketScanPolicy) -> BTreeSet<String> {
    let spec = &policy.spec;
    let mut names = BTreeSet::from([spec.minio.credentials_secret.name.clone(), spec.rabbitmq.url_secret.name.clone()]);
    if let Some(secret) = spec.actions.webhook.as_ref().and_then(|webhook| webhook.secret_ref.as_ref()) {
        names.insert(secret.name.clone());
    }
    for ca in [&spec.minio.ca_bundle, &spec.rabbitmq.ca_bundle].into_iter().flatten() {
        if ca.kind == CaBundleSource::Secret {
            names.insert(ca.name.clone());
        }
    }
    names
}

/// A fingerprint of a Secret's data (its keys and values, plus `stringData` should a client
/// have left it unmerged): 16 hex digits of SHA-256. It goes into the worker pod template, which
/// people who may not read the Secret can read, so the Secret's UID keys the hash: without it a
/// short password could be found by hashing guesses. The UID is readable only with access to the
/// Secret itself. A recreated Secret gets a new UID and so rolls the workers once.
pub(crate) fn data_fingerprint(secret: &Secret) -> String {
    let mut hasher = Sha256::new();
    let uid = secret.metadata.uid.as_deref().unwrap_or_default();
    let mut feed = |part: &[u8]| {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    };
    feed(uid.as_bytes());
    for (key, value) in secret.data.iter().flatten() {
        feed(key.as_bytes());
        feed(&value.0);
    }
    for (key, value) in secret.string_data.iter().flatten() {
        feed(key.as_bytes());
        feed(value.as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

/// The text under `key` of a Secret.
pub(crate) fn secret_value(secret: &Secret, key: &str) -> Result<Redacted> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let bytes = secret.data.as_ref().and_then(|data| data.get(key)).ok_or_else(|| {
        ReferenceError::ReferenceKeyMissing { kind: "secret", name: name.clone(), key: key.to_owned() }
    })?;
    let text = String::from_utf8(bytes.0.clone()).map_err(|_| ReferenceError::ReferenceNotText {
        kind: "secret",
        name,
        key: key.to_owned(),
    })?;
    Ok(Redacted::new(text))
}

/// The text under `key` of a ConfigMap, from `data` or `binaryData`.
pub(crate) fn config_map_value(config_map: &ConfigMap, key: &str) -> Result<String> {
    let name = config_map.metadata.name.clone().unwrap_or_default();
    if let Some(text) = config_map.data.as_ref().and_then(|data| data.get(key)) {
        return Ok(text.clone());
    }
    let bytes = config_map.binary_data.as_ref().and_then(|data| data.get(key)).ok_or_else(|| {
        ReferenceError::ReferenceKeyMissing { kind: "configmap", name: name.clone(), key: key.to_owned() }
    })?;
    String::from_utf8(bytes.0.clone()).map_err(|_| ReferenceError::ReferenceNotText {
        kind: "configmap",
        name,
        key: key.to_owned(),
    })
}

/// Reads the value under `key` of the Secret `namespace/name`.
pub(crate) async fn read_secret(client: &Client, namespace: &str, name: &str, key: &str) -> Result<Redacted> {
    let secret = get(Api::<Secret>::namespaced(client.clone(), namespace), "secret", namespace, name).await?;
    secret_value(&secret, key)
}

/// Reads a CA bundle from its ConfigMap or Secret.
pub(crate) async fn read_ca_bundle(client: &Client, namespace: &str, ca: &CaBundleRef) -> Result<String> {
    match ca.kind {
        CaBundleSource::ConfigMap => {
            let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
            config_map_value(&get(api, "configmap", namespace, &ca.name).await?, &ca.key)
        }
        CaBundleSource::Secret => {
            let api = Api::<Secret>::namespaced(client.clone(), namespace);
            let secret = get(api, "secret", namespace, &ca.name).await?;
            Ok(secret_value(&secret, &ca.key)?.expose().to_owned())
        }
    }
}

async fn get<K>(api: Api<K>, kind: &'static str, namespace: &str, name: &str) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(Some(object)) => Ok(object),
        Ok(None) => {
            Err(ReferenceError::ReferenceMissing { kind, namespace: namespace.to_owned(), name: name.to_owned() })
        }
        Err(source) => Err(ReferenceError::ReadReference {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        }),
    }
}

/// Writes a PEM bundle where the S3 and AMQP clients can read it (they take file paths):
/// `<dir>/<namespace>/<policy>/<file>`. The directory must be writable (an emptyDir at /tmp
/// when the operator's root filesystem is read-only).
pub(crate) fn write_ca_file(dir: &Path, namespace: &str, policy: &str, file: &str, pem: &str) -> Result<PathBuf> {
    let folder = dir.join(namespace).join(policy);
    let path = folder.join(file);
    std::fs::create_dir_all(&folder)
        .and_then(|()| std::fs::write(&path, pem))
        .map_err(|source| ReferenceError::WriteCaBundle { path: path.clone(), source })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn secret(data: &[(&str, &[u8])]) -> Secret {
        Secret {
            metadata: ObjectMeta { name: Some("minio-creds".into()), ..ObjectMeta::default() },
            data: Some(data.iter().map(|(key, value)| (key.to_string(), ByteString(value.to_vec()))).collect()),
            ..Secret::default()
        }
    }

    #[test]
    fn secret_values_are_read_and_missing_keys_named() {
        let creds = secret(&[("accessKey", b"scanner"), ("bad", &[0xff, 0xfe])]);
        assert_eq!(secret_value(&creds, "accessKey").unwrap().expose(), "scanner");
        let missing = secret_value(&creds, "secretKey").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "secret minio-creds has no key secretKey: add it or set the key the policy reads"
        );
        assert_eq!(secret_value(&creds, "bad").unwrap_err().kind(), "ReferenceNotText");
    }

    #[test]
    fn the_fingerprint_follows_the_data_only() {
        let mut creds = secret(&[("accessKey", b"scanner"), ("secretKey", b"s3cret")]);
        creds.metadata.uid = Some("uid-1".into());
        let before = data_fingerprint(&creds);
        assert_eq!(before.len(), 16);
        let mut relabelled = creds.clone();
        relabelled.metadata.labels = Some(BTreeMap::from([("team".to_owned(), "media".to_owned())]));
        relabelled.metadata.annotations = Some(BTreeMap::from([("touched".to_owned(), "now".to_owned())]));
        relabelled.metadata.resource_version = Some("42".into());
        assert_eq!(data_fingerprint(&relabelled), before, "metadata does not count");
        let mut rotated = creds.clone();
        rotated.data.as_mut().unwrap().insert("secretKey".into(), ByteString(b"n3w".to_vec()));
        assert_ne!(data_fingerprint(&rotated), before, "a new value counts");
        let mut recreated = creds.clone();
        recreated.metadata.uid = Some("uid-2".into());
        assert_ne!(data_fingerprint(&recreated), before, "the UID keys the hash");
        // Keys and values cannot be shifted into one another.
        let shifted = secret(&[("accessKeys", b"canner"), ("secretKey", b"s3cret")]);
        assert_ne!(
            data_fingerprint(&shifted),
            data_fingerprint(&secret(&[("accessKey", b"scanner"), ("secretKey", b"s3cret")]))
        );
    }

    #[test]
    fn config_map_values_come_from_data_or_binary_data() {
        let config_map = ConfigMap {
            metadata: ObjectMeta { name: Some("cluster-ca".into()), ..ObjectMeta::default() },
            data: Some(BTreeMap::from([("ca.crt".to_owned(), "PEM".to_owned())])),
            binary_data: Some(BTreeMap::from([("other.crt".to_owned(), ByteString(b"BIN".to_vec()))])),
            ..ConfigMap::default()
        };
        assert_eq!(config_map_value(&config_map, "ca.crt").unwrap(), "PEM");
        assert_eq!(config_map_value(&config_map, "other.crt").unwrap(), "BIN");
        assert_eq!(
            config_map_value(&config_map, "nope").unwrap_err().to_string(),
            "configmap cluster-ca has no key nope: add it or set the key the policy reads"
        );
    }

    #[test]
    fn referenced_secrets_include_webhook_and_secret_ca_bundles_only() {
        let mut policy: BucketScanPolicy =
            serde_norway::from_str(include_str!("../../crds/examples/bucketscanpolicy.yaml")).unwrap();
        let names: Vec<String> = referenced_secrets(&policy).into_iter().collect();
        // The example's MinIO CA bundle is a ConfigMap and its webhook has a secretRef.
        assert_eq!(names, ["bucket-av-webhook", "minio-scanner", "rabbitmq-scanner"]);
        policy.spec.rabbitmq.ca_bundle =
            Some(CaBundleRef { kind: CaBundleSource::Secret, name: "amqp-ca".into(), key: "ca.crt".into() });
        assert!(referenced_secrets(&policy).contains("amqp-ca"));
    }

    #[test]
    fn ca_files_land_under_namespace_and_policy() {
        let dir = std::env::temp_dir().join(format!("bucket-av-operator-test-{}", std::process::id()));
        let path = write_ca_file(&dir, "media", "uploads", "s3-ca.pem", "PEM").unwrap();
        assert_eq!(path, dir.join("media/uploads/s3-ca.pem"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "PEM");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
