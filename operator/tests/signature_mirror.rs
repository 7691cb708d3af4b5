//! The cluster's signature mirror as deployed: the operator binary's `signature-mirror` serving a
//! database directory, and a worker's freshclam (`/usr/bin/freshclam`, from the stack's Debian
//! packages) configured exactly as the operator configures the clamd sidecar of a policy that
//! names no signature source.
//!
//! | what | must hold |
//! | --- | --- |
//! | an official database | its CVD header answers the `Range: bytes=0-511` freshclam asks first (206), `.cld` is 404 while only `.cvd` exists, `If-Modified-Since` gets 304; version and age are metrics |
//! | anything else | freshclam's own state, other names, `..` in any spelling: 404, nothing read outside the list |
//! | readiness | `/readyz` fails naming a missing database, passes once it is back |
//! | freshclam | fetches every custom database from the mirror (byte for byte) and nothing else; a second run asks with `If-Modified-Since` and is told 304 |
//!
//! Official databases are not fetched by freshclam here: it accepts only CVDs signed by Talos,
//! which no test can make (the real-pods suite runs the whole path with custom databases).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bucket_av_crds::BucketScanPolicy;
use bucket_av_testing::private_clamd::build_unsigned_database;
use bucket_av_testing::process::free_port;
use bucket_av_testing::{ServiceProcess, unique_name};
use reqwest::StatusCode;
use tokio::process::Command;

const CUSTOM: [&str; 2] = ["bavs-test.hdb", "bavs-test.ndb"];
const DAILY_VERSION: u32 = 27_777;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// A CVD-format `daily.cvd` of `DAILY_VERSION` (unsigned: sigtool --unsigned), as the mirror's
/// freshclam would leave it, so that the header the mirror reads is sigtool's own.
fn build_daily(dir: &Path) {
    let build = dir.join("build");
    std::fs::rename(build_unsigned_database(&build, "daily", DAILY_VERSION, &[]), dir.join("daily.cvd")).unwrap();
    std::fs::remove_dir_all(&build).unwrap();
}

fn policy_without_signature_source() -> BucketScanPolicy {
    serde_norway::from_str(
        r#"
apiVersion: bucketav.dev/v1alpha1
kind: BucketScanPolicy
metadata: {name: uploads, namespace: media}
spec:
  minio: {endpoint: "http://minio:9000", credentialsSecret: {name: minio}}
  buckets: [{name: uploads}]
  rabbitmq: {urlSecret: {name: rabbitmq}}
  scanner: {sidecar: {}}
"#,
    )
    .expect("the test policy")
}

async fn metric(http: &reqwest::Client, base: &str, line_start: &str) -> Option<f64> {
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find(|line| line.starts_with(line_start))?.rsplit(' ').next()?.parse().ok()
}

async fn run_freshclam(config: &Path) -> String {
    let output = Command::new("freshclam")
        .arg(format!("--config-file={}", config.display()))
        .arg("--stdout")
        .output()
        .await
        .expect("run freshclam (Debian package clamav-freshclam): install the stack with `just provision`");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "freshclam failed:\n{text}");
    text
}

#[tokio::test]
async fn workers_fetch_every_database_from_the_mirror_and_nothing_else_is_served() {
    let root = std::env::temp_dir().join(unique_name("bavs-mirror"));
    let served = root.join("mirror");
    std::fs::create_dir_all(&served).unwrap();
    for file in CUSTOM {
        std::fs::copy(repo_file(&format!("testing/signatures/{file}")), served.join(file)).unwrap();
    }
    build_daily(&served);
    // What the mirror's freshclam keeps beside the databases: never served.
    std::fs::write(served.join("freshclam.dat"), b"state").unwrap();

    let listen = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_bucket-av-operator"));
    command.arg("signature-mirror").arg("--directory").arg(&served).args([
        "--database",
        "daily,bavs-test.hdb,bavs-test.ndb",
        "--listen",
        &listen,
    ]);
    let mirror = ServiceProcess::spawn("signature mirror", command, listen.clone(), Duration::from_secs(20)).await;
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();

    // ---- an official database, as freshclam asks for it ----------------------------------
    let cvd = std::fs::read(served.join("daily.cvd")).unwrap();
    let head = http.get(format!("{base}/daily.cvd")).header("Range", "bytes=0-511").send().await.unwrap();
    assert_eq!(head.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(head.headers()["content-range"], format!("bytes 0-511/{}", cvd.len()).as_str());
    let last_modified = head.headers()["last-modified"].to_str().unwrap().to_owned();
    assert_eq!(head.bytes().await.unwrap().as_ref(), &cvd[..512]);
    let whole = http.get(format!("{base}/daily.cvd")).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.bytes().await.unwrap().as_ref(), cvd.as_slice());
    let unchanged =
        http.get(format!("{base}/daily.cvd")).header("If-Modified-Since", &last_modified).send().await.unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(http.get(format!("{base}/daily.cld")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let version = metric(&http, &base, "bucket_av_signature_mirror_database_version{database=\"daily\"}").await;
    assert_eq!(version, Some(f64::from(DAILY_VERSION)));
    let age = metric(&http, &base, "bucket_av_signature_mirror_database_age_seconds{database=\"daily\"}").await;
    assert!(age.is_some_and(|age| (0.0..600.0).contains(&age)), "daily was built just now: age {age:?}");

    // ---- nothing else ---------------------------------------------------------------------
    for path in ["freshclam.dat", "main.cvd", "%2e%2e%2fetc%2fpasswd", "..%2F..%2Fetc%2Fpasswd", "bavs-test.hdb.tmp"] {
        let answer = http.get(format!("{base}/{path}")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "/{path}");
    }

    // ---- readiness follows the directory ---------------------------------------------------
    std::fs::rename(served.join("bavs-test.ndb"), root.join("away.ndb")).unwrap();
    let not_ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(not_ready.text().await.unwrap().contains("bavs-test.ndb"), "readyz names what is missing");
    std::fs::rename(root.join("away.ndb"), served.join("bavs-test.ndb")).unwrap();
    assert_eq!(http.get(format!("{base}/readyz")).send().await.unwrap().status(), StatusCode::OK);

    // ---- a worker's freshclam, configured as the operator configures the sidecar ----------
    let conf = bucket_av_operator::sidecar_freshclam_conf(
        &policy_without_signature_source(),
        &base,
        "bavs-test.hdb,bavs-test.ndb",
    )
    .expect("databases")
    .expect("a sidecar with freshclam");
    assert!(conf.contains(&format!("PrivateMirror {base}\n")), "{conf}");
    // This host's paths, as the pod's volume gives them; root here, clamav in the pod.
    let client_dir = root.join("worker-db");
    std::fs::create_dir_all(&client_dir).unwrap();
    let mut lines: Vec<String> =
        conf.lines().filter(|line| !line.starts_with("DatabaseDirectory")).map(str::to_owned).collect();
    lines.push(format!("DatabaseDirectory {}", client_dir.display()));
    lines.push("DatabaseOwner root".to_owned());
    let client_conf = root.join("freshclam.conf");
    std::fs::write(&client_conf, lines.join("\n") + "\n").unwrap();

    let first = run_freshclam(&client_conf).await;
    for file in CUSTOM {
        let fetched =
            std::fs::read(client_dir.join(file)).unwrap_or_else(|e| panic!("{file} not fetched ({e}):\n{first}"));
        assert_eq!(fetched, std::fs::read(served.join(file)).unwrap(), "{file} differs from the mirror's");
        let label = format!("bucket_av_signature_mirror_requests_total{{database=\"{file}\",code=\"200\"}}");
        assert_eq!(metric(&http, &base, &label).await, Some(1.0), "one download of {file}");
    }
    let stray: Vec<String> = std::fs::read_dir(&client_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !CUSTOM.contains(&name.as_str()) && name != "freshclam.dat")
        .collect();
    assert!(stray.is_empty(), "freshclam fetched more than the mirror carries: {stray:?}\n{first}");

    let second = run_freshclam(&client_conf).await;
    for file in CUSTOM {
        assert!(second.contains(&format!("{file} is up-to-date")), "{second}");
        let label = format!("bucket_av_signature_mirror_requests_total{{database=\"{file}\",code=\"304\"}}");
        assert_eq!(metric(&http, &base, &label).await, Some(1.0), "a conditional request for {file}:\n{second}");
    }

    drop(mirror);
    std::fs::remove_dir_all(&root).unwrap();
}
