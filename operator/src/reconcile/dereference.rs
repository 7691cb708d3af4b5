//! The dereference step: reads what the policy refers to, the Secrets and ConfigMaps holding its
//! MinIO and RabbitMQ credentials and CA bundles, and fingerprints of the data of the Secrets the
//! workers read. It only reads; secret values never leave the returned settings.

use std::collections::BTreeMap;

use bucket_av_crds::BucketScanPolicy;
use bucket_av_s3::S3Settings;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::context::Context;
use crate::secrets::{self, ReferenceError};
use crate::services::AmqpSettings;

/// The connection settings read from the policy's Secrets and ConfigMaps.
pub(crate) struct Resolved {
    pub(crate) amqp: AmqpSettings,
    pub(crate) s3: S3Settings,
}

/// Reads the policy's connection settings; CA bundles are written to files under the scratch
/// directory, as the S3 and AMQP clients take paths.
pub(crate) async fn dereference(
    policy: &BucketScanPolicy,
    namespace: &str,
    ctx: &Context,
) -> Result<Resolved, ReferenceError> {
    let name = policy.name_any();
    let spec = &policy.spec;
    let client = &ctx.client;
    let amqp_url =
        secrets::read_secret(client, namespace, &spec.rabbitmq.url_secret.name, &spec.rabbitmq.url_secret.key).await?;
    let credentials = &spec.minio.credentials_secret;
    let access_key = secrets::read_secret(client, namespace, &credentials.name, &credentials.access_key_key).await?;
    let secret_key = secrets::read_secret(client, namespace, &credentials.name, &credentials.secret_key_key).await?;
    let amqp_ca = match &spec.rabbitmq.ca_bundle {
        Some(ca) => {
            let pem = secrets::read_ca_bundle(client, namespace, ca).await?;
            Some(secrets::write_ca_file(&ctx.scratch_dir, namespace, &name, "amqp-ca.pem", &pem)?)
        }
        None => None,
    };
    let s3_ca = match &spec.minio.ca_bundle {
        Some(ca) => {
            let pem = secrets::read_ca_bundle(client, namespace, ca).await?;
            Some(secrets::write_ca_file(&ctx.scratch_dir, namespace, &name, "s3-ca.pem", &pem)?)
        }
        None => None,
    };
    let s3 = S3Settings {
        endpoint: spec.minio.endpoint.clone(),
        region: spec.minio.region.clone(),
        access_key: access_key.expose().to_owned(),
        secret_key,
        ca_bundle: s3_ca,
    };
    Ok(Resolved { amqp: AmqpSettings { url: amqp_url, ca_bundle: amqp_ca }, s3 })
}

/// A fingerprint of the data of every Secret the workers read (`absent` for one that does not
/// exist: its pods cannot start until it does, and its creation then rolls them). Only the data
/// counts, so a label or annotation change (or a no-op update) of a Secret rolls no worker.
pub(crate) async fn secret_fingerprints(
    policy: &BucketScanPolicy,
    namespace: &str,
    ctx: &Context,
) -> Result<BTreeMap<String, String>, ReferenceError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut fingerprints = BTreeMap::new();
    for name in secrets::referenced_secrets(policy) {
        let fingerprint = match api.get_opt(&name).await {
            Ok(Some(secret)) => secrets::data_fingerprint(&secret),
            Ok(None) => "absent".to_owned(),
            Err(source) => {
                return Err(ReferenceError::ReadReference {
                    kind: "secret",
                    namespace: namespace.to_owned(),
                    name,
                    source: Box::new(source),
                });
            }
        };
        fingerprints.insert(name, fingerprint);
    }
    Ok(fingerprints)
}
