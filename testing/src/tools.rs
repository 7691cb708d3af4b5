//! The pinned tools the provisioning scripts build or install into the per-machine cache, found
//! the way those scripts put them there.

use std::path::{Path, PathBuf};

/// `${XDG_CACHE_HOME:-~/.cache}/bucket-av-scanner/tools`, as `testing/lib.sh` names it.
pub fn tools_dir() -> PathBuf {
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(&std::env::var("HOME").expect("HOME is set")).join(".cache"));
    cache.join("bucket-av-scanner/tools")
}

/// A pinned tool's version from its provisioning script's `NAME=<version>` line (the script's
/// text, e.g. through `include_str!`).
pub fn pinned_version(script: &str, variable: &str) -> String {
    script
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{variable}=")))
        .unwrap_or_else(|| panic!("no {variable}= line in its provisioning script"))
        .trim()
        .to_owned()
}
