//! HTTP for the mirror: the database files (with the `If-Modified-Since` and `Range` requests
//! freshclam makes: it reads a CVD's 512-byte header to decide whether to download the rest),
//! `/healthz`, `/readyz` (every database present) and `/metrics`.

use std::io::SeekFrom;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::sync::CancellationToken;

use super::databases::{CVD_HEADER_BYTES, Database, parse_cvd_header};
use super::metrics::{DatabaseLabel, MirrorMetrics, RequestLabels};

/// The directory freshclam keeps current, the databases served from it, and the counters.
pub(super) struct Mirror {
    directory: PathBuf,
    databases: Vec<Database>,
    metrics: MirrorMetrics,
}

impl Mirror {
    pub(super) fn new(directory: PathBuf, databases: Vec<Database>) -> Self {
        Self { directory, databases, metrics: MirrorMetrics::new() }
    }

    /// The configured database `file` is a name of, if any: nothing else is served.
    fn database_of(&self, file: &str) -> Option<&Database> {
        self.databases.iter().find(|database| database.file_names().iter().any(|name| name == file))
    }

    /// Reads what each database's files say (present, version, age) into the gauges; returns the
    /// names of those missing.
    async fn refresh(&self) -> Vec<String> {
        let now = OffsetDateTime::now_utc();
        let mut missing = Vec::new();
        for database in &self.databases {
            let label = DatabaseLabel { database: database.name().to_owned() };
            match self.newest_copy(database).await {
                Some(copy) => {
                    self.metrics.present.get_or_create(&label).set(1);
                    let age = (now - copy.built_at).as_seconds_f64().max(0.0);
                    self.metrics.age.get_or_create(&label).set(age);
                    if let Some(version) = copy.version {
                        self.metrics.version.get_or_create(&label).set(i64::try_from(version).unwrap_or(i64::MAX));
                    }
                }
                None => {
                    self.metrics.present.get_or_create(&label).set(0);
                    missing.push(database.name().to_owned());
                }
            }
        }
        missing
    }

    /// The newest file of `database` in the directory: for an official database the `.cld` or
    /// `.cvd` with the higher version in its header.
    async fn newest_copy(&self, database: &Database) -> Option<Copy> {
        let mut newest: Option<Copy> = None;
        for name in database.file_names() {
            let path = self.directory.join(&name);
            let Ok(meta) = tokio::fs::symlink_metadata(&path).await else { continue };
            if !meta.is_file() || meta.len() == 0 {
                continue;
            }
            let modified = meta.modified().map(OffsetDateTime::from).unwrap_or_else(|_| OffsetDateTime::now_utc());
            let copy = match database {
                Database::Custom(_) => Copy { version: None, built_at: modified },
                Database::Official(_) => {
                    let Some(header) = read_header(&path).await else { continue };
                    Copy { version: Some(header.version), built_at: header.built_at.unwrap_or(modified) }
                }
            };
            if newest.as_ref().is_none_or(|current| copy.version > current.version) {
                newest = Some(copy);
            }
        }
        newest
    }
}

struct Copy {
    version: Option<u64>,
    built_at: OffsetDateTime,
}

async fn read_header(path: &std::path::Path) -> Option<super::databases::CvdHeader> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let mut header = vec![0; CVD_HEADER_BYTES];
    file.read_exact(&mut header).await.ok()?;
    parse_cvd_header(&header)
}

pub(super) fn router(mirror: Arc<Mirror>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/{file}", get(serve_file))
        .with_state(mirror)
}

/// Binds `addr` (failing at once when it cannot) and serves until `shutdown`.
pub(super) async fn serve(
    addr: SocketAddr,
    mirror: Arc<Mirror>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let names: Vec<&str> = mirror.databases.iter().map(Database::name).collect();
    tracing::info!(addr = %listener.local_addr()?, directory = %mirror.directory.display(), databases = ?names, "serving signature databases");
    let app = router(mirror).into_make_service_with_connect_info::<SocketAddr>();
    Ok(tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(error) = server.await {
            tracing::error!(%error, "HTTP server failed");
        }
    }))
}

async fn readyz(State(mirror): State<Arc<Mirror>>) -> Response {
    let missing = mirror.refresh().await;
    if missing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let text = format!(
            "not in {} yet: {} (the mirror's freshclam has not fetched them; see its log)\n",
            mirror.directory.display(),
            missing.join(", ")
        );
        (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
    }
}

async fn metrics(State(mirror): State<Arc<Mirror>>) -> Response {
    mirror.refresh().await;
    ([(header::CONTENT_TYPE, bucket_av_runtime::OPENMETRICS_CONTENT_TYPE)], mirror.metrics.render()).into_response()
}

async fn serve_file(
    State(mirror): State<Arc<Mirror>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let served = mirror.database_of(&file);
    let database = served.map_or("none", Database::name).to_owned();
    let (response, sent) = match served {
        None => (plain(StatusCode::NOT_FOUND, "not a database this mirror serves\n"), 0),
        Some(_) => file_response(&mirror.directory.join(&file), &headers).await,
    };
    let code = response.status().as_u16();
    tracing::info!(%peer, %file, code, bytes = sent, "database request");
    mirror.metrics.requests.get_or_create(&RequestLabels { database, code }).inc();
    mirror.metrics.bytes_served.inc_by(sent);
    response
}

/// The response for one database file, and how many body bytes it sends.
async fn file_response(path: &std::path::Path, headers: &HeaderMap) -> (Response, u64) {
    let not_here = || (plain(StatusCode::NOT_FOUND, "not in the mirror yet\n"), 0);
    // Never follow a link out of the directory.
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.is_file() => {}
        _ => return not_here(),
    }
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return not_here(),
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "cannot open a database file");
            return (plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n"), 0);
        }
    };
    let Ok(meta) = file.metadata().await else {
        return (plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n"), 0);
    };
    let len = meta.len();
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let last_modified = http_date(modified);

    let since = headers.get(header::IF_MODIFIED_SINCE).and_then(|value| value.to_str().ok()).and_then(parse_http_date);
    if since.is_some_and(|since| whole_seconds(modified) <= since) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        set(&mut response, header::LAST_MODIFIED, &last_modified);
        return (response, 0);
    }

    let range = parse_range(headers.get(header::RANGE).and_then(|value| value.to_str().ok()), len);
    let (status, start, count) = match range {
        RangeRequest::Whole => (StatusCode::OK, 0, len),
        RangeRequest::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeRequest::Unsatisfiable => {
            let mut response = plain(StatusCode::RANGE_NOT_SATISFIABLE, "range outside the file\n");
            set(&mut response, header::CONTENT_RANGE, &format!("bytes */{len}"));
            return (response, 0);
        }
    };
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return (plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n"), 0);
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(count)));
    let mut response = (status, body).into_response();
    set(&mut response, header::CONTENT_TYPE, "application/octet-stream");
    set(&mut response, header::CONTENT_LENGTH, &count.to_string());
    set(&mut response, header::LAST_MODIFIED, &last_modified);
    set(&mut response, header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        set(&mut response, header::CONTENT_RANGE, &format!("bytes {start}-{}/{len}", start + count - 1));
    }
    (response, count)
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

fn set(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// What a `Range` header asks of a file of `len` bytes. Only one `bytes=` range is honoured;
/// anything else (several ranges, other units, nonsense) gets the whole file, as RFC 9110 allows.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    Whole,
    /// Bytes `start..=end`.
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|text| text.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else { return RangeRequest::Whole };
    let (first, last) = (first.trim(), last.trim());
    match (first.parse::<u64>(), last.parse::<u64>()) {
        // bytes=-N: the last N bytes.
        (Err(_), Ok(suffix)) if first.is_empty() => {
            if suffix == 0 || len == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part { start: len.saturating_sub(suffix), end: len - 1 }
            }
        }
        (Ok(start), Err(_)) if last.is_empty() => {
            if start >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part { start, end: len - 1 }
            }
        }
        (Ok(start), Ok(end)) if start <= end => {
            if start >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part { start, end: end.min(len - 1) }
            }
        }
        _ => RangeRequest::Whole,
    }
}

const HTTP_DATE: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP dates are sent in.
fn http_date(when: SystemTime) -> String {
    OffsetDateTime::from(when).format(HTTP_DATE).unwrap_or_default()
}

/// Reads an IMF-fixdate; the obsolete forms are not sent by freshclam (libcurl).
fn parse_http_date(text: &str) -> Option<OffsetDateTime> {
    time::PrimitiveDateTime::parse(text.trim(), HTTP_DATE).ok().map(time::PrimitiveDateTime::assume_utc)
}

/// HTTP dates have whole seconds: a file modified at 12:00:00.7 is not newer than a copy dated
/// 12:00:00.
fn whole_seconds(when: SystemTime) -> OffsetDateTime {
    let when = OffsetDateTime::from(when);
    when.replace_nanosecond(0).unwrap_or(when)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_range_is_honoured_and_the_rest_gets_the_whole_file() {
        let part = |start, end| RangeRequest::Part { start, end };
        assert_eq!(parse_range(Some("bytes=0-511"), 1000), part(0, 511));
        assert_eq!(parse_range(Some("bytes=0-511"), 100), part(0, 99));
        assert_eq!(parse_range(Some("bytes=900-"), 1000), part(900, 999));
        assert_eq!(parse_range(Some("bytes=-100"), 1000), part(900, 999));
        assert_eq!(parse_range(Some("bytes=-5000"), 1000), part(0, 999));
        assert_eq!(parse_range(Some("bytes=1000-"), 1000), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 1000), RangeRequest::Unsatisfiable);
        for whole in [None, Some("bytes=5-1"), Some("bytes=0-1,5-6"), Some("items=0-1"), Some("bytes=x-y")] {
            assert_eq!(parse_range(whole, 1000), RangeRequest::Whole, "{whole:?}");
        }
    }

    #[test]
    fn http_dates_round_trip_in_whole_seconds() {
        let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(784_111_777_700);
        let text = http_date(when);
        assert_eq!(text, "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date(&text), Some(whole_seconds(when)));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
    }
}
