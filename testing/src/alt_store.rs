//! The second S3 store the tests run beside MinIO (the Versity S3 gateway, no bucket
//! notifications), as `testing/s3alt/up.sh` describes it in its env file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bucket_av_core::Redacted;
use bucket_av_s3::S3Settings;

use crate::stack::parse_env_file;

pub struct AltStore {
    pub vars: HashMap<String, String>,
    pub env_file: PathBuf,
}

impl AltStore {
    /// Loads `$BAVS_ALT_S3_ENV`, or `target/s3alt/s3alt.env` of this workspace. Panics with what
    /// to run when the store is not up: the tests that need it must not pass without it.
    pub fn load() -> Self {
        let env_file = std::env::var_os("BAVS_ALT_S3_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/s3alt/s3alt.env"));
        let text = std::fs::read_to_string(&env_file).unwrap_or_else(|error| {
            panic!(
                "the second S3 store is not running: cannot read {} ({error}). Start it with `bash testing/s3alt/up.sh` (stop it with `bash testing/s3alt/down.sh`)",
                env_file.display()
            )
        });
        Self { vars: parse_env_file(&text), env_file }
    }

    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("{} has no {key}; re-run `bash testing/s3alt/up.sh`", self.env_file.display()))
    }

    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: self.var("BAVS_ALT_S3_ENDPOINT").to_owned(),
            region: self.var("BAVS_ALT_S3_REGION").to_owned(),
            access_key: self.var("BAVS_ALT_S3_ACCESS_KEY").to_owned(),
            secret_key: Redacted::new(self.var("BAVS_ALT_S3_SECRET_KEY")),
            ca_bundle: None,
        }
    }

    /// The client the worker would build for this store.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        bucket_av_s3::client(&self.settings()).expect("the second store's S3 settings are valid")
    }
}
