//! Opens AMQP connections for both binaries: plain `amqp://`, or `amqps://` trusting either the
//! system roots or a private CA bundle.

use std::path::{Path, PathBuf};

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};

use bucket_av_core::Redacted;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("read AMQP CA bundle {path}: {source}")]
    ReadCaBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to RabbitMQ: {0}")]
    Connect(#[source] lapin::Error),
}

/// Connects to `url`; with `ca_bundle`, TLS connections trust the PEM certificates in it.
pub async fn connect(url: &Redacted, ca_bundle: Option<&Path>) -> Result<Connection, ConnectError> {
    let properties = ConnectionProperties::default();
    let Some(path) = ca_bundle else {
        return Connection::connect(url.expose(), properties).await.map_err(ConnectError::Connect);
    };
    let pem =
        std::fs::read_to_string(path).map_err(|source| ConnectError::ReadCaBundle { path: path.to_owned(), source })?;
    let tls = OwnedTLSConfig { identity: None, cert_chain: Some(pem) };
    let runtime = lapin::runtime::default_runtime().map_err(ConnectError::Connect)?;
    Connection::connect_with_config(url.expose(), properties, tls, runtime).await.map_err(ConnectError::Connect)
}

/// Closes the channels, then the connection, ignoring errors (a channel a failed operation
/// closed already is fine). Closing the connection with channels still open makes lapin log a
/// spurious "invalid channel state: Closing" error for each of them.
pub async fn close(connection: &Connection, channels: &[&lapin::Channel]) {
    for channel in channels {
        let _ = channel.close(200, "done".into()).await;
    }
    let _ = connection.close(200, "done".into()).await;
}
