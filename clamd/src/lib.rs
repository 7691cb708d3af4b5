//! A clamd client over TCP or a unix socket: PING, VERSION and INSTREAM. It streams bytes it is
//! given and returns clamd's reply text; what the reply means is the caller's business (the
//! worker's `verdict` module).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpStream, UnixStream};

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    Tcp(String),
    Unix(PathBuf),
}

impl FromStr for ClamdAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err("unix:// needs a socket path, as in unix:///run/clamav/clamd.ctl".into());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let host_port = s.strip_prefix("tcp://").unwrap_or(s);
        match host_port.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Tcp(host_port.to_owned()))
            }
            _ => Err(format!("{s:?} is not host:port, tcp://host:port or unix:///path")),
        }
    }
}

impl fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    #[error("connect to clamd at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talk to clamd: {0}")]
    Io(#[source] std::io::Error),
    #[error("clamd sent no reply")]
    NoReply,
    #[error("clamd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("read object body: {0}")]
    Source(String),
}

impl ClamdError {
    /// True when clamd itself could not be reached or dropped us: the scan is worth retrying
    /// once clamd is back, and the object is not to blame.
    pub fn is_connection(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Io(_) | Self::NoReply | Self::Timeout(_))
    }
}

trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// A cheap, cloneable handle: each command opens its own connection, as clamd expects for
/// INSTREAM, so scans never share a socket.
#[derive(Debug, Clone)]
pub struct Clamd {
    address: ClamdAddress,
    chunk_bytes: usize,
}

impl Clamd {
    pub fn new(address: ClamdAddress, chunk_bytes: usize) -> Self {
        Self { address, chunk_bytes }
    }

    pub fn address(&self) -> &ClamdAddress {
        &self.address
    }

    async fn connect(&self) -> Result<Box<dyn Socket>, ClamdError> {
        let connect_error = |source| ClamdError::Connect { address: self.address.to_string(), source };
        Ok(match &self.address {
            ClamdAddress::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await.map_err(connect_error)?;
                stream.set_nodelay(true).map_err(ClamdError::Io)?;
                Box::new(stream)
            }
            ClamdAddress::Unix(path) => Box::new(UnixStream::connect(path).await.map_err(connect_error)?),
        })
    }

    /// Sends a one-word command (`PING`, `VERSION`) and returns the reply.
    pub async fn command(&self, command: &str, timeout: Duration) -> Result<String, ClamdError> {
        let exchange = async {
            let mut socket = self.connect().await?;
            socket.write_all(format!("z{command}\0").as_bytes()).await.map_err(ClamdError::Io)?;
            read_reply(&mut socket).await
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| ClamdError::Timeout(timeout))?
    }

    pub async fn ping(&self, timeout: Duration) -> Result<(), ClamdError> {
        match self.command("PING", timeout).await?.as_str() {
            "PONG" => Ok(()),
            _ => Err(ClamdError::NoReply),
        }
    }

    /// Streams `body` into INSTREAM and returns clamd's reply (`stream: OK`, `stream: X FOUND`,
    /// `... ERROR`). When clamd refuses the stream part-way (its StreamMaxLength) it replies and
    /// closes; that reply is returned rather than the write error it causes.
    pub async fn instream<S, E>(&self, body: S, timeout: Duration) -> Result<String, ClamdError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: fmt::Display,
    {
        let scan = async {
            let socket = self.connect().await?;
            let (reader, writer) = tokio::io::split(socket);
            let mut reader = reader;
            match self.send_stream(writer, body).await {
                Ok(()) => read_reply(&mut reader).await,
                Err(SendError::Source(message)) => Err(ClamdError::Source(message)),
                Err(SendError::Io(write_error)) => match read_reply(&mut reader).await {
                    Ok(reply) => Ok(reply),
                    Err(_) => Err(ClamdError::Io(write_error)),
                },
            }
        };
        tokio::time::timeout(timeout, scan).await.map_err(|_| ClamdError::Timeout(timeout))?
    }

    async fn send_stream<W, S, E>(&self, writer: W, mut body: S) -> Result<(), SendError>
    where
        W: AsyncWrite + Unpin,
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: fmt::Display,
    {
        // One buffer of chunk size: small network reads are coalesced into full chunks, large
        // ones split, so clamd sees few, even chunks and memory stays at one chunk per scan.
        let mut writer = BufWriter::with_capacity(self.chunk_bytes + 4, writer);
        writer.write_all(b"zINSTREAM\0").await.map_err(SendError::Io)?;
        let mut pending: Vec<u8> = Vec::with_capacity(self.chunk_bytes);
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| SendError::Source(e.to_string()))?;
            let mut rest: &[u8] = &piece;
            while !rest.is_empty() {
                let take = (self.chunk_bytes - pending.len()).min(rest.len());
                pending.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if pending.len() == self.chunk_bytes {
                    write_chunk(&mut writer, &pending).await?;
                    pending.clear();
                }
            }
        }
        if !pending.is_empty() {
            write_chunk(&mut writer, &pending).await?;
        }
        writer.write_all(&0u32.to_be_bytes()).await.map_err(SendError::Io)?;
        writer.flush().await.map_err(SendError::Io)
    }
}

enum SendError {
    Io(std::io::Error),
    Source(String),
}

async fn write_chunk<W: AsyncWrite + Unpin>(writer: &mut W, chunk: &[u8]) -> Result<(), SendError> {
    let length = u32::try_from(chunk.len()).expect("chunk size is bounded by the chunk_bytes flag");
    writer.write_all(&length.to_be_bytes()).await.map_err(SendError::Io)?;
    writer.write_all(chunk).await.map_err(SendError::Io)
}

/// Reads a NUL-terminated reply (or up to EOF), trimmed.
async fn read_reply<R: AsyncRead + Unpin>(reader: &mut R) -> Result<String, ClamdError> {
    let mut reply = Vec::with_capacity(64);
    let mut buf = [0u8; 512];
    loop {
        let n = reader.read(&mut buf).await.map_err(ClamdError::Io)?;
        if n == 0 {
            break;
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            reply.extend_from_slice(&buf[..end]);
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.len() > 64 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&reply).trim().to_owned();
    if text.is_empty() { Err(ClamdError::NoReply) } else { Ok(text) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_from_the_usual_forms() {
        assert_eq!("127.0.0.1:3310".parse(), Ok(ClamdAddress::Tcp("127.0.0.1:3310".into())));
        assert_eq!("tcp://clamd:3310".parse(), Ok(ClamdAddress::Tcp("clamd:3310".into())));
        assert_eq!("unix:///run/clamd.sock".parse(), Ok(ClamdAddress::Unix("/run/clamd.sock".into())));
        assert!("clamd".parse::<ClamdAddress>().is_err());
        assert!("unix://".parse::<ClamdAddress>().is_err());
    }

    #[tokio::test]
    async fn instream_frames_chunks_with_big_endian_lengths_and_a_zero_terminator() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let clamd = Clamd::new(ClamdAddress::Tcp("unused:1".into()), 4);
        let body =
            futures::stream::iter(vec![Ok::<_, String>(Bytes::from_static(b"abcdef")), Ok(Bytes::from_static(b"gh"))]);
        clamd.send_stream(client, body).await.ok().unwrap();
        let mut sent = Vec::new();
        server.read_to_end(&mut sent).await.unwrap();
        let mut expected = b"zINSTREAM\0".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 4]);
        expected.extend_from_slice(b"abcd");
        expected.extend_from_slice(&[0, 0, 0, 4]);
        expected.extend_from_slice(b"efgh");
        expected.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(sent, expected);
    }
}
