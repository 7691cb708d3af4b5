//! The reference Standard Webhooks verifier (PyPI `standardwebhooks`, pinned and installed by
//! testing/webhook-verifier/provision.sh) as a child process. Tests check the worker's deliveries
//! with it, never with code of ours, so a signing mistake cannot hide behind the same mistake in
//! the check.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const PROVISION_SCRIPT: &str = include_str!("../webhook-verifier/provision.sh");
const SECRET_VARIABLE: &str = "BAVS_WEBHOOK_VERIFIER_SECRET";

pub struct ReferenceVerifier {
    pipes: tokio::sync::Mutex<Pipes>,
    _child: Child,
}

struct Pipes {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl ReferenceVerifier {
    /// A verifier for `secret` as the worker's `--webhook-secret` takes it. A plain value is handed
    /// to the library the way the README tells receivers to: `whsec_` + base64 of the value.
    /// Panics, saying what to run, when the verifier is not installed.
    pub fn start(secret: &str) -> Self {
        let python = installed_python();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("webhook-verifier/verify.py");
        let mut child = tokio::process::Command::new(&python)
            .arg(&script)
            .env(SECRET_VARIABLE, standard_secret(secret))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("start {} {}: {error}", python.display(), script.display()));
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        Self { pipes: tokio::sync::Mutex::new(Pipes { stdin, stdout }), _child: child }
    }

    /// What the reference library says of one delivery: `Err` with its reason when it refuses it.
    pub async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
        let headers: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into()))
            .collect();
        let mut line = serde_json::json!({ "headers": headers, "body": STANDARD.encode(body) }).to_string();
        line.push('\n');
        let mut pipes = self.pipes.lock().await;
        pipes
            .stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to the reference verifier (did it die? its errors are on stderr)");
        let answer = pipes
            .stdout
            .next_line()
            .await
            .expect("read from the reference verifier")
            .expect("the reference verifier exited; its errors are on stderr");
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("the verifier answers JSON");
        match answer["error"].as_str() {
            None if answer["ok"] == true => Ok(()),
            None => panic!("unexpected answer from the reference verifier: {answer}"),
            Some(error) => Err(error.to_owned()),
        }
    }
}

/// The secret in the spec's form: `whsec_` values as they are, others as `whsec_` + base64.
pub fn standard_secret(secret: &str) -> String {
    if secret.starts_with("whsec_") { secret.to_owned() } else { format!("whsec_{}", STANDARD.encode(secret)) }
}

/// The venv's python, at the path provision.sh installs to (same cache, same pinned version, read
/// from the script itself so the two cannot drift).
fn installed_python() -> PathBuf {
    let version = PROVISION_SCRIPT
        .lines()
        .find_map(|line| line.strip_prefix("STANDARDWEBHOOKS_VERSION="))
        .expect("provision.sh pins STANDARDWEBHOOKS_VERSION");
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    let venv = cache.join(format!("bucket-av-scanner/tools/standardwebhooks-{version}"));
    assert!(
        venv.join(".installed").exists(),
        "the reference Standard Webhooks verifier (PyPI standardwebhooks {version}) is not installed in {}: \
         run `bash testing/webhook-verifier/provision.sh` (`just test` runs it)",
        venv.display()
    );
    venv.join("bin/python")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_secrets_become_whsec_base64_and_whsec_ones_stay() {
        assert_eq!(standard_secret("s3cr3t-key"), "whsec_czNjcjN0LWtleQ==");
        assert_eq!(standard_secret("whsec_abc"), "whsec_abc");
    }
}
