//! Which signature databases the cluster's mirror carries, the files each one is served as, and
//! what a worker's freshclam is told to fetch them from the mirror.

use std::fmt;

use time::OffsetDateTime;

/// The databases freshclam fetches unless told otherwise (`ExcludeDatabase` opts out of them).
pub(crate) const STANDARD: [&str; 3] = ["main", "daily", "bytecode"];

/// File extensions freshclam accepts in a `DatabaseCustomURL` (freshclam.conf(5)), which are also
/// the only custom files the mirror serves.
const CUSTOM_EXTENSIONS: [&str; 26] = [
    "cdb", "cfg", "cvd", "fp", "ftm", "gdb", "hdb", "hsb", "idb", "ign", "ign2", "info", "ldb", "ldu", "mdb", "msb",
    "ndb", "ndu", "pdb", "sdb", "sfp", "wdb", "yar", "yara", "zmd", "imp",
];

/// One database of the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Database {
    /// An official ClamAV database (`main`, `daily`, ...): a signed `.cvd`, or a `.cld` where the
    /// mirror's freshclam applied updates to one.
    Official(String),
    /// A database file from a `DatabaseCustomURL` (third-party or the organisation's own
    /// signatures), served under its file name.
    Custom(String),
}

impl Database {
    /// `main`, `daily`, ... (lower-case letters and digits) or a file name with one of the
    /// extensions freshclam takes for custom databases.
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        let plain = |text: &str| {
            !text.is_empty()
                && text.len() <= 64
                && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !text.starts_with('-')
        };
        match name.rsplit_once('.') {
            None if plain(name) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) => {
                Ok(Self::Official(name.to_owned()))
            }
            Some((stem, extension)) if plain(stem) && CUSTOM_EXTENSIONS.contains(&extension) => {
                Ok(Self::Custom(name.to_owned()))
            }
            _ => Err(format!(
                "{name:?} is neither an official database name (lower-case letters and digits, e.g. daily) \
                 nor a custom database file name (letters, digits, - and _, then one of .{})",
                CUSTOM_EXTENSIONS.join(", .")
            )),
        }
    }

    /// Parses a comma-separated list (as `--database main,daily,bytecode` gives it).
    pub(crate) fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        let mut databases: Vec<Self> = Vec::new();
        for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            let database = Self::parse(name)?;
            if !databases.contains(&database) {
                databases.push(database);
            }
        }
        if databases.is_empty() {
            return Err("no database named: list at least one (e.g. main,daily,bytecode)".into());
        }
        Ok(databases)
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Official(name) | Self::Custom(name) => name,
        }
    }

    /// The file names this database may be served as, in the order freshclam asks for them
    /// (it tries `.cld` before `.cvd` on a private mirror).
    pub(crate) fn file_names(&self) -> Vec<String> {
        match self {
            Self::Official(name) => vec![format!("{name}.cld"), format!("{name}.cvd")],
            Self::Custom(name) => vec![name.clone()],
        }
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The freshclam.conf lines that make a worker's freshclam fetch exactly `databases` from the
/// mirror at `url` and nothing from anywhere else: `PrivateMirror` replaces the public mirrors
/// (and turns off DNS checks and scripted updates), standard databases the mirror does not carry
/// are excluded (else freshclam fails on them), and custom ones come from the mirror's copy.
pub(crate) fn freshclam_client_lines(url: &str, databases: &[Database]) -> String {
    let url = url.trim_end_matches('/');
    let official: Vec<&str> = databases
        .iter()
        .filter_map(|database| match database {
            Database::Official(name) => Some(name.as_str()),
            Database::Custom(_) => None,
        })
        .collect();
    let mut lines = format!("PrivateMirror {url}\n");
    for standard in STANDARD {
        if !official.contains(&standard) {
            lines.push_str(&format!("ExcludeDatabase {standard}\n"));
        }
    }
    for name in official.iter().filter(|name| !STANDARD.contains(name)) {
        lines.push_str(&format!("ExtraDatabase {name}\n"));
    }
    for database in databases {
        if let Database::Custom(file) = database {
            lines.push_str(&format!("DatabaseCustomURL {url}/{file}\n"));
        }
    }
    lines
}

/// What the 512-byte header of a `.cvd`/`.cld` says about the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CvdHeader {
    pub(crate) version: u64,
    /// When it was built (the header's last field, seconds since the epoch), if present.
    pub(crate) built_at: Option<OffsetDateTime>,
}

/// Length of a CVD header.
pub(crate) const CVD_HEADER_BYTES: usize = 512;

/// Reads `ClamAV-VDB:<build time>:<version>:<signatures>:<level>:<md5>:<dsig>:<builder>:<stime>`,
/// padded with spaces or NULs to 512 bytes. `None` when it is not such a header.
pub(crate) fn parse_cvd_header(bytes: &[u8]) -> Option<CvdHeader> {
    let header = bytes.get(..CVD_HEADER_BYTES.min(bytes.len()))?;
    let text = std::str::from_utf8(header).ok()?.trim_end_matches(['\0', ' ', '\n']);
    let fields: Vec<&str> = text.split(':').collect();
    if fields.first() != Some(&"ClamAV-VDB") || fields.len() < 4 {
        return None;
    }
    let version = fields[2].trim().parse().ok()?;
    let built_at = fields
        .get(8)
        .and_then(|stime| stime.trim().parse::<i64>().ok())
        .and_then(|seconds| OffsetDateTime::from_unix_timestamp(seconds).ok());
    Some(CvdHeader { version, built_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_and_custom_names_are_told_apart_and_nothing_else_is_taken() {
        assert_eq!(Database::parse("daily"), Ok(Database::Official("daily".into())));
        assert_eq!(Database::parse("bavs-test.hdb"), Ok(Database::Custom("bavs-test.hdb".into())));
        for bad in ["", "Daily", "../daily", "daily.exe", ".hdb", "a/b.hdb", "-x.hdb", "freshclam.dat", "x y.ndb"] {
            assert!(Database::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(Database::parse_list(" main, daily,main ,x.ndb").unwrap().len(), 3);
        assert!(Database::parse_list(" , ").unwrap_err().contains("no database"));
    }

    #[test]
    fn an_official_database_is_served_as_cld_or_cvd() {
        assert_eq!(Database::Official("daily".into()).file_names(), ["daily.cld", "daily.cvd"]);
        assert_eq!(Database::Custom("x.hdb".into()).file_names(), ["x.hdb"]);
    }

    #[test]
    fn workers_fetch_what_the_mirror_carries_and_only_from_it() {
        let all = Database::parse_list("main,daily,bytecode").unwrap();
        assert_eq!(freshclam_client_lines("http://mirror.ns.svc/", &all), "PrivateMirror http://mirror.ns.svc\n");

        let custom = Database::parse_list("daily,safebrowsing,own.hdb").unwrap();
        assert_eq!(
            freshclam_client_lines("http://m", &custom),
            "PrivateMirror http://m\nExcludeDatabase main\nExcludeDatabase bytecode\nExtraDatabase safebrowsing\n\
             DatabaseCustomURL http://m/own.hdb\n"
        );
    }

    #[test]
    fn a_cvd_header_gives_version_and_build_time() {
        let mut header = b"ClamAV-VDB:30 Nov 2026 03-49 +0000:27830:2077:90:8914d04c:X:builder:1796010555".to_vec();
        header.resize(CVD_HEADER_BYTES, b' ');
        let parsed = parse_cvd_header(&header).unwrap();
        assert_eq!(parsed.version, 27830);
        assert_eq!(parsed.built_at.unwrap().unix_timestamp(), 1_796_010_555);

        let old = b"ClamAV-VDB:09 Jun 2008 12-00 -0400:47:100:35:md5:dsig:builder\0\0";
        assert_eq!(parse_cvd_header(old), Some(CvdHeader { version: 47, built_at: None }));
        assert_eq!(parse_cvd_header(b"<html>not found</html>"), None);
        assert_eq!(parse_cvd_header(b"ClamAV-VDB:x:notanumber:1"), None);
    }
}
