//! MinIO users for tests that revoke a worker's credentials: created, disabled, re-enabled and
//! removed through MinIO's admin API (`/minio/admin/v3`), signed as the stack's root user. The
//! stack's own credentials are never touched, so suites running beside these are unaffected.
//!
//! Requests are signed with AWS SigV4 here (service `s3`); bodies MinIO expects encrypted are
//! sealed with `bucket_av_minio_admin::encrypt_data`, madmin's format.

use bucket_av_testing::Stack;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::macros::format_description;

pub struct MinioAdmin {
    endpoint: String,
    access_key: String,
    secret_key: String,
    http: reqwest::Client,
}

impl MinioAdmin {
    pub fn new(stack: &Stack) -> Self {
        Self {
            endpoint: stack.var("BAVS_S3_ENDPOINT").trim_end_matches('/').to_owned(),
            access_key: stack.var("BAVS_S3_ACCESS_KEY").to_owned(),
            secret_key: stack.var("BAVS_S3_SECRET_KEY").to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// Creates (or resets) an enabled user with `secret` and the built-in `readwrite` policy.
    pub async fn add_readwrite_user(&self, user: &str, secret: &str) {
        let body = serde_json::json!({"secretKey": secret, "status": "enabled"}).to_string();
        let sealed = bucket_av_minio_admin::encrypt_data(&self.secret_key, body.as_bytes());
        self.send("PUT", "/add-user", &[("accessKey", user)], sealed).await;
        let policy = [("isGroup", "false"), ("policyName", "readwrite"), ("userOrGroup", user)];
        self.send("PUT", "/set-user-or-group-policy", &policy, Vec::new()).await;
    }

    /// Creates (or resets) an enabled user with `secret` and only `policy` (an IAM policy
    /// document), stored as the canned policy `policy_name`.
    pub async fn add_user_with_policy(&self, user: &str, secret: &str, policy_name: &str, policy: &serde_json::Value) {
        let body = serde_json::json!({"secretKey": secret, "status": "enabled"}).to_string();
        let sealed = bucket_av_minio_admin::encrypt_data(&self.secret_key, body.as_bytes());
        self.send("PUT", "/add-user", &[("accessKey", user)], sealed).await;
        self.send("PUT", "/add-canned-policy", &[("name", policy_name)], policy.to_string().into_bytes()).await;
        let attach = [("isGroup", "false"), ("policyName", policy_name), ("userOrGroup", user)];
        self.send("PUT", "/set-user-or-group-policy", &attach, Vec::new()).await;
    }

    /// `mc admin user disable|enable`.
    pub async fn set_user_enabled(&self, user: &str, enabled: bool) {
        let status = if enabled { "enabled" } else { "disabled" };
        self.send("PUT", "/set-user-status", &[("accessKey", user), ("status", status)], Vec::new()).await;
    }

    /// `mc admin user remove`: the access key stops existing.
    pub async fn remove_user(&self, user: &str) {
        self.send("DELETE", "/remove-user", &[("accessKey", user)], Vec::new()).await;
    }

    /// Sends one signed admin request; panics with MinIO's answer unless it is 2xx.
    async fn send(&self, method: &str, path: &str, query: &[(&str, &str)], body: Vec<u8>) {
        let path = format!("/minio/admin/v3{path}");
        let mut pairs: Vec<(String, String)> = query.iter().map(|(k, v)| (sigv4_encode(k), sigv4_encode(v))).collect();
        pairs.sort();
        let canonical_query = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let host = self.endpoint.split("://").nth(1).expect("the stack's endpoint has a scheme");
        let now = OffsetDateTime::now_utc();
        let amz_date = now.format(format_description!("[year][month][day]T[hour][minute][second]Z")).unwrap();
        let day = &amz_date[..8];
        let payload_hash = hex::encode(Sha256::digest(&body));
        let canonical_request = format!(
            "{method}\n{path}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\n{payload_hash}"
        );
        let scope = format!("{day}/us-east-1/s3/aws4_request");
        let string_to_sign =
            format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical_request)));
        let mut key = hmac(format!("AWS4{}", self.secret_key).as_bytes(), day.as_bytes());
        for part in ["us-east-1", "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}",
            self.access_key
        );
        let mut url = format!("{}{path}", self.endpoint);
        if !canonical_query.is_empty() {
            url = format!("{url}?{canonical_query}");
        }
        let response = self
            .http
            .request(method.parse().expect("an HTTP method"), &url)
            .header("x-amz-date", &amz_date)
            .header("x-amz-content-sha256", &payload_hash)
            .header("authorization", authorization)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|error| panic!("MinIO admin {method} {path}: {error}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "MinIO admin {method} {path} answered {status}: {text}");
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// SigV4's URI encoding: everything but unreserved characters, `/` included.
fn sigv4_encode(value: &str) -> String {
    bucket_av_core::percent_encode(value, b"")
}
