//! The S3 side of the pipeline, shared by the worker and the operator.
//!
//! - [`client`](mod@client): the S3 client for MinIO (static credentials, path-style addressing, a private
//!   CA, cheap downloads) and short descriptions of its errors.
//! - [`listing`]: one page of a bucket listing with each object's tags in the same answer where
//!   the store offers it (MinIO's `metadata=true`), so a sweep needs no GetObjectTagging per object.
//! - [`notification`]: a bucket's notification entries that route upload events to one AMQP
//!   target, changed read-merge-write so other users' entries are never touched.

pub mod client;
pub mod listing;
pub mod notification;

pub use client::{
    Client, ErrorCode, S3Failure, S3Settings, S3SetupError, S3Timeouts, client, client_with, describe_error,
    error_chain,
};
pub use listing::{ListError, ListedObject, Lister, Page, PageRequest};
