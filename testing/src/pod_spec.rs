//! A container of a Deployment in the cluster, turned into a local process the way the kubelet
//! would start it: its command and args, its environment with `secretKeyRef`, `configMapKeyRef`
//! and `fieldRef` resolved from the cluster. Anything this cannot reproduce faithfully (envFrom,
//! `$(VAR)` expansion) fails loudly instead of being approximated.

use base64::Engine;
use serde_json::Value;
use tokio::process::Command;

use crate::Cluster;
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
    /// template; `pod_name` stands in for `metadata.name` in field references.
    pub fn from_deployment(cluster: &Cluster, namespace: &str, deployment: &str, container: &str) -> Self {
        let object = cluster.get_json(namespace, "deployment", deployment);
        let spec = &object["spec"]["template"]["spec"];
        let containers = spec["containers"].as_array().expect("pod template has containers");
        let found = containers
            .iter()
            .find(|candidate| candidate["name"] == container)
            .unwrap_or_else(|| panic!("deployment {deployment} has no container {container}"));
        assert!(found.get("envFrom").is_none(), "envFrom is not reproduced locally: {found}");
        let strings = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .map(|items| items.iter().map(|item| item.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let command = strings(&found["command"]);
        assert!(!command.is_empty(), "container {container} names no command; it must not rely on an image entrypoint");
        let args = strings(&found["args"]);
        for word in command.iter().chain(&args) {
            assert!(!word.contains("$("), "$(VAR) expansion is not reproduced locally: {word}");
        }
        let pod_name = format!("{deployment}-local");
        let env = found["env"]
            .as_array()
            .map(|vars| vars.iter().map(|var| resolve_env(cluster, namespace, &pod_name, var)).collect())
            .unwrap_or_default();
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

fn resolve_env(cluster: &Cluster, namespace: &str, pod_name: &str, var: &Value) -> (String, String) {
    let name = var["name"].as_str().expect("env var has a name").to_owned();
    if let Some(value) = var.get("value") {
        return (name, value.as_str().unwrap_or_default().to_owned());
    }
    let from = &var["valueFrom"];
    let value = if let Some(reference) = from.get("secretKeyRef") {
        let secret = cluster.get_json(namespace, "secret", reference["name"].as_str().unwrap());
        let encoded = secret["data"][reference["key"].as_str().unwrap()]
            .as_str()
            .unwrap_or_else(|| panic!("secret {reference} lacks the key that env {name} reads"));
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("secret data is base64");
        String::from_utf8(bytes).expect("secret value is text")
    } else if let Some(reference) = from.get("configMapKeyRef") {
        let config_map = cluster.get_json(namespace, "configmap", reference["name"].as_str().unwrap());
        config_map["data"][reference["key"].as_str().unwrap()]
            .as_str()
            .unwrap_or_else(|| panic!("configmap {reference} lacks the key that env {name} reads"))
            .to_owned()
    } else if let Some(field) = from.get("fieldRef") {
        match field["fieldPath"].as_str().unwrap() {
            "metadata.name" => pod_name.to_owned(),
            "metadata.namespace" => namespace.to_owned(),
            other => panic!("fieldRef {other} of env {name} is not reproduced locally"),
        }
    } else {
        panic!("env {name} has a source this harness does not resolve: {from}");
    };
    (name, value)
}
