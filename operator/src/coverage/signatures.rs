//! Reads the signature database announcements the workers publish on `<queue>.signatures`.

use bucket_av_core::coverage::{SignatureAnnouncement, newest_version};
use lapin::Channel;
use lapin::options::BasicGetOptions;
use tracing::{debug, warn};

/// Announcements read in one look at most; the queue keeps 1000 and drops the oldest.
const MAX_READ: usize = 1000;

/// Takes every announcement waiting and returns the newest database version among them.
/// `None` when there were none (or the queue is missing: the channel then closes, which is why
/// it is given its own).
pub(crate) async fn newest(channel: &Channel, queue: &str) -> Option<String> {
    let mut versions: Vec<String> = Vec::new();
    for _ in 0..MAX_READ {
        let message = match channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(error) => {
                warn!(queue, error = %error, "could not read signature announcements");
                break;
            }
        };
        match serde_json::from_slice::<SignatureAnnouncement>(&message.delivery.data) {
            Ok(announcement) => {
                debug!(queue, worker = %announcement.worker, engine = %announcement.engine, "signature database announced");
                versions.extend(announcement.database);
            }
            Err(error) => warn!(queue, error = %error, "ignored a message that is not a signature announcement"),
        }
    }
    newest_version(versions.iter().map(String::as_str)).map(str::to_owned)
}
