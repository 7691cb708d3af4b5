//! Registering the server with the aggregator: the `APIService` object for
//! `v1beta1.external.metrics.k8s.io` (built purely, so it can be unit-tested and rendered into a
//! chart) and helpers that server-side-apply and delete it. Creating the Service it points at and
//! the RBAC around it is the caller's job.

use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{APIService, APIServiceSpec, ServiceReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use crate::Error;
use crate::api::{GROUP, VERSION};

/// The only name the external metrics APIService can have: one provider per cluster.
pub const API_SERVICE_NAME: &str = "v1beta1.external.metrics.k8s.io";

/// Where the aggregator finds the server and how it verifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServiceRegistration {
    /// The Service in front of the server; the aggregator verifies the serving certificate for
    /// `<service_name>.<service_namespace>.svc`.
    pub service_name: String,
    pub service_namespace: String,
    /// The Service port (443 when `None`).
    pub port: Option<u16>,
    /// PEM of the CA that signed the serving certificate (e.g. [`crate::ServingCert::ca_bundle_pem`]).
    pub ca_bundle_pem: String,
    /// Among APIServices of this group; 100 is what metrics adapters commonly use.
    pub group_priority_minimum: i32,
    pub version_priority: i32,
}

impl ApiServiceRegistration {
    pub fn new(
        service_name: impl Into<String>,
        service_namespace: impl Into<String>,
        ca_bundle_pem: impl Into<String>,
    ) -> Self {
        Self {
            service_name: service_name.into(),
            service_namespace: service_namespace.into(),
            port: None,
            ca_bundle_pem: ca_bundle_pem.into(),
            group_priority_minimum: 100,
            version_priority: 100,
        }
    }

    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The APIService object; `caBundle` set, `insecureSkipTLSVerify` never.
    pub fn api_service(&self) -> APIService {
        APIService {
            metadata: ObjectMeta {
                name: Some(API_SERVICE_NAME.to_owned()),
                labels: Some([("app.kubernetes.io/managed-by".to_owned(), FIELD_MANAGER.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(APIServiceSpec {
                group: Some(GROUP.to_owned()),
                version: Some(VERSION.to_owned()),
                group_priority_minimum: self.group_priority_minimum,
                version_priority: self.version_priority,
                ca_bundle: Some(ByteString(self.ca_bundle_pem.clone().into_bytes())),
                insecure_skip_tls_verify: None,
                service: Some(ServiceReference {
                    name: Some(self.service_name.clone()),
                    namespace: Some(self.service_namespace.clone()),
                    port: self.port.map(i32::from),
                }),
            }),
            status: None,
        }
    }
}

/// The field manager of [`apply_api_service`].
pub const FIELD_MANAGER: &str = "bucket-av-external-metrics";

/// Server-side-applies the APIService (forcing ownership of the fields it sets, so a restart with
/// a new self-signed CA takes over `caBundle`). Needs RBAC `patch` on
/// `apiregistration.k8s.io/apiservices` named `v1beta1.external.metrics.k8s.io`.
pub async fn apply_api_service(
    client: kube::Client,
    registration: &ApiServiceRegistration,
) -> Result<APIService, Error> {
    let api: Api<APIService> = Api::all(client);
    api.patch(API_SERVICE_NAME, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(registration.api_service()))
        .await
        .map_err(Error::ApplyApiService)
}

/// Deletes the APIService; already gone counts as done. Deleting it while HPAs use external
/// metrics makes them stop scaling ("the server could not find the requested resource").
pub async fn delete_api_service(client: kube::Client) -> Result<(), Error> {
    let api: Api<APIService> = Api::all(client);
    match api.delete(API_SERVICE_NAME, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(Error::DeleteApiService(error)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn api_service_points_at_the_service_and_trusts_the_ca_bundle() {
        let registration =
            ApiServiceRegistration::new("bucket-av-metrics", "bucket-av", "-----BEGIN CERTIFICATE-----\n")
                .with_port(8443);
        let object = serde_json::to_value(registration.api_service()).expect("json");
        assert_eq!(
            object,
            json!({
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {
                    "name": "v1beta1.external.metrics.k8s.io",
                    "labels": {"app.kubernetes.io/managed-by": "bucket-av-external-metrics"},
                },
                "spec": {
                    "group": "external.metrics.k8s.io",
                    "version": "v1beta1",
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                    "caBundle": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
                    "service": {"name": "bucket-av-metrics", "namespace": "bucket-av", "port": 8443},
                },
            })
        );
    }

    #[test]
    fn port_defaults_to_the_apiservice_default() {
        let registration = ApiServiceRegistration::new("s", "ns", "pem");
        let object = serde_json::to_value(registration.api_service()).expect("json");
        assert!(object["spec"]["service"].get("port").is_none());
    }
}
