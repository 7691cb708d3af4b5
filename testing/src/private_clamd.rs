//! A clamd of a test's own whose signature database the test builds and updates, as freshclam
//! would: a versioned, dated `daily.cud` made with `sigtool` (what an official update carries),
//! beside the stack's test signatures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::process::free_port;
use crate::{Stack, unique_name, wait_for};

/// A clamd of a test's own, with the configuration the stack's clamd runs (the operator's
/// rendering) and a database directory it can change. Stopped by PID when dropped.
pub struct PrivateClamd {
    dir: PathBuf,
    port: u16,
    pid: i32,
}

impl PrivateClamd {
    pub async fn start(stack: &Stack, database_version: u32, signatures: &[&[u8]]) -> Self {
        let dir = std::env::temp_dir().join(unique_name("bavs-clamd"));
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        let stack_conf = Path::new(stack.var("BAVS_STACK_DIR")).join("clamd/clamd.conf");
        let conf =
            std::fs::read_to_string(&stack_conf).unwrap_or_else(|e| panic!("read {}: {e}", stack_conf.display()));
        let own = |name: &str| dir.join(name).display().to_string();
        let mut lines: Vec<String> = conf
            .lines()
            .filter(|line| {
                let key = line.split_whitespace().next().unwrap_or("");
                !["DatabaseDirectory", "TCPSocket", "LocalSocket", "PidFile", "LogFile", "TemporaryDirectory"]
                    .contains(&key)
            })
            .map(str::to_owned)
            .collect();
        lines.push(format!("DatabaseDirectory {}", own("db")));
        lines.push(format!("TCPSocket {port}"));
        lines.push(format!("PidFile {}", own("clamd.pid")));
        lines.push(format!("LogFile {}", own("clamd.log")));
        lines.push(format!("TemporaryDirectory {}", own("tmp")));
        std::fs::write(dir.join("clamd.conf"), lines.join("\n") + "\n").unwrap();
        // The stack's own test signatures (EICAR and the marker), as its clamd has them.
        for entry in std::fs::read_dir(Path::new(stack.var("BAVS_STACK_DIR")).join("clamd/db")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join("db").join(path.file_name().unwrap())).unwrap();
        }
        let mut clamd = Self { dir, port, pid: 0 };
        clamd.install_database(database_version, signatures);
        let status = std::process::Command::new("/usr/sbin/clamd")
            .arg(format!("--config-file={}", clamd.dir.join("clamd.conf").display()))
            .status()
            .expect("run clamd");
        assert!(status.success(), "clamd failed to start; see {}", clamd.dir.join("clamd.log").display());
        let pid_file = clamd.dir.join("clamd.pid");
        let pid =
            wait_for("the private clamd's PID file", Duration::from_secs(30), Duration::from_millis(100), async || {
                std::fs::read_to_string(&pid_file)
                    .map_err(|e| e.to_string())?
                    .trim()
                    .parse::<i32>()
                    .map_err(|e| e.to_string())
            })
            .await;
        clamd.pid = pid;
        clamd.wait_version(database_version).await;
        clamd
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Builds `daily.cud` of this version holding a SHA-256 signature of each of `signatures`
    /// and installs it in clamd's database directory (a rename: clamd never sees half a file).
    fn install_database(&self, version: u32, signatures: &[&[u8]]) {
        let build = self.dir.join(format!("build-{version}"));
        let cud = build_unsigned_database(&build, "daily", version, signatures);
        std::fs::copy(cud, self.dir.join("db/daily.cud.new")).unwrap();
        std::fs::rename(self.dir.join("db/daily.cud.new"), self.dir.join("db/daily.cud")).unwrap();
    }

    pub async fn command(&self, command: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(self.address()).await.expect("connect to the private clamd");
        socket.write_all(format!("z{command}\0").as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        socket.read_to_end(&mut reply).await.unwrap();
        String::from_utf8_lossy(&reply).trim_end_matches('\0').to_owned()
    }

    async fn wait_version(&self, version: u32) {
        let wanted = format!("/{version}/");
        wait_for(
            &format!("clamd to load database version {version}"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            async || {
                let reply = self.command("VERSION").await;
                if reply.contains(&wanted) { Ok(()) } else { Err(reply) }
            },
        )
        .await;
    }

    /// Installs a newer database and makes clamd load it, as freshclam does after an update.
    pub async fn update(&self, version: u32, signatures: &[&[u8]]) {
        self.install_database(version, signatures);
        assert_eq!(self.command("RELOAD").await, "RELOADING");
        self.wait_version(version).await;
    }
}

impl Drop for PrivateClamd {
    fn drop(&mut self) {
        if self.pid > 0 {
            let _ = std::process::Command::new("kill").arg(self.pid.to_string()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds `<name>.cud` in `build` (created): an unsigned database in CVD format, as
/// `sigtool --unsigned` makes them, of `version`, built now, holding a SHA-256 signature of each
/// of `signatures` (a placeholder nothing uploaded matches comes first: sigtool refuses an empty
/// signature file). Returns its path.
pub fn build_unsigned_database(build: &Path, name: &str, version: u32, signatures: &[&[u8]]) -> PathBuf {
    std::fs::create_dir_all(build).unwrap();
    let placeholder = format!("bucket-av test database {version}").into_bytes();
    let mut hsb = String::new();
    for (i, body) in std::iter::once(placeholder.as_slice()).chain(signatures.iter().copied()).enumerate() {
        let digest = hex::encode(Sha256::digest(body));
        hsb.push_str(&format!("{digest}:{}:BucketAV.Test.Update{version}.{i}\n", body.len()));
    }
    std::fs::write(build.join(format!("{name}.hsb")), hsb).unwrap();
    std::fs::write(build.join("COPYING"), "test database\n").unwrap();
    let mut sigtool = std::process::Command::new("sigtool")
        .current_dir(build)
        .args([&format!("--build={name}.cud"), "--unsigned", &format!("--cvd-version={version}"), "--max-bad-sigs=0"])
        .arg(format!("--datadir={}", build.display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run sigtool (Debian package clamav; `just provision` installs it)");
    use std::io::Write as _;
    // sigtool asks for the builder's name.
    sigtool.stdin.take().unwrap().write_all(b"bucket-av-tests\n").unwrap();
    assert!(sigtool.wait().unwrap().success(), "sigtool failed in {}", build.display());
    build.join(format!("{name}.cud"))
}
