//! The RabbitMQ side of the pipeline, shared by the worker and the operator.
//!
//! - [`connection`]: opening (`amqp://` or `amqps://` with a private CA) and closing connections.
//! - [`topology`]: the exchange, work queue and dead-letter queue that carry bucket events,
//!   declared idempotently, and the message headers the worker reads and writes.

pub mod connection;
pub mod topology;

pub use connection::{ConnectError, close, connect};
pub use topology::{Topology, TopologyError};
