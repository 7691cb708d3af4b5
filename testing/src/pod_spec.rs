//! A container of a Deployment in the cluster, turned into a local process the way the kubelet
//! would start it: its command and args, its environment with `secretKeyRef`, `configMapKeyRef`
//! and `fieldRef` resolved from the cluster. Anything this cannot reproduce faithfully (envFrom,
//! `$(VAR)` expansion) fails loudly instead of being approximated.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, Secret};
use kube::{Api, Client};
use tokio::process::Command;

use crate::process::workspace_binary;

/// How one container would be started.
#[derive(Debug, Clone)]
pub struct ContainerLaunch {
    /// The container's `command` (the image's entrypoint is not consulted: ours set it).
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl ContainerLaunch {
    /// Reads Deployment `namespace/deployment` and resolves container `container` of its pod
    /// template; `<deployment>-local` stands in for `metadata.name` in field references.
    pub async fn from_deployment(client: &Client, namespace: &str, deployment: &str, container: &str) -> Self {
        let object = Api::<Deployment>::namespaced(client.clone(), namespace)
            .get(deployment)
            .await
            .unwrap_or_else(|error| panic!("get deployment {deployment}: {error}"));
        let spec = object.spec.template.spec.expect("the pod template has a spec");
        let found = spec
            .containers
            .into_iter()
            .find(|candidate| candidate.name == container)
            .unwrap_or_else(|| panic!("deployment {deployment} has no container {container}"));
        assert!(found.env_from.is_none(), "envFrom is not reproduced locally: {found:?}");
        let command = found.command.unwrap_or_default();
        assert!(!command.is_empty(), "container {container} names no command; it must not rely on an image entrypoint");
        let args = found.args.unwrap_or_default();
        for word in command.iter().chain(&args) {
            assert!(!word.contains("$("), "$(VAR) expansion is not reproduced locally: {word}");
        }
        let pod_name = format!("{deployment}-local");
        let mut env = Vec::new();
        for var in found.env.unwrap_or_default() {
            env.push(resolve_env(client, namespace, &pod_name, var).await);
        }
        Self { command, args, env }
    }

    /// The value the container sees for `name`.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// A command running this workspace's build of the container's program (by file name) with
    /// exactly its args and environment, plus `overrides` (such as a free port for a listen
    /// address that several local processes cannot share).
    pub fn local_command(&self, overrides: &[(&str, &str)]) -> Command {
        let program = self.command[0].rsplit('/').next().unwrap();
        let mut command = Command::new(workspace_binary(program));
        command
            .args(&self.command[1..])
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        for (key, value) in overrides {
            command.env(key, value);
        }
        command
    }
}

async fn resolve_env(client: &Client, namespace: &str, pod_name: &str, var: EnvVar) -> (String, String) {
    let name = var.name;
    if let Some(value) = var.value {
        return (name, value);
    }
    let from = var.value_from.unwrap_or_else(|| panic!("env {name} has neither a value nor a source"));
    let value = if let Some(reference) = &from.secret_key_ref {
        let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
        let secret = secrets.get(&reference.name).await.unwrap_or_else(|error| panic!("get {reference:?}: {error}"));
        let bytes = secret
            .data
            .and_then(|mut data| data.remove(&reference.key))
            .unwrap_or_else(|| panic!("secret {reference:?} lacks the key that env {name} reads"));
        String::from_utf8(bytes.0).expect("secret value is text")
    } else if let Some(reference) = &from.config_map_key_ref {
        let config_maps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
        let config_map =
            config_maps.get(&reference.name).await.unwrap_or_else(|error| panic!("get {reference:?}: {error}"));
        config_map
            .data
            .and_then(|mut data| data.remove(&reference.key))
            .unwrap_or_else(|| panic!("configmap {reference:?} lacks the key that env {name} reads"))
    } else if let Some(field) = &from.field_ref {
        match field.field_path.as_str() {
            "metadata.name" => pod_name.to_owned(),
            "metadata.namespace" => namespace.to_owned(),
            other => panic!("fieldRef {other} of env {name} is not reproduced locally"),
        }
    } else {
        panic!("env {name} has a source this harness does not resolve: {from:?}");
    };
    (name, value)
}
