//! The names RabbitMQ objects take from a work queue's name. The worker derives them from its
//! `--queue` when it runs without the operator, the operator from the policy, so both must call
//! these.

/// The dead-letter queue of a work queue: where messages go after their last delivery.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The dead-letter exchange of a work queue.
pub fn dead_letter_exchange(queue: &str) -> String {
    format!("{queue}.dlx")
}

/// The coverage queue of a work queue: objects no upload event brought (backfill, sweep,
/// rescans), consumed beside the work queue with a share of the worker's slots of its own.
pub fn coverage_queue(queue: &str) -> String {
    format!("{queue}.coverage")
}

/// The queue the workers announce their signature database version on, for the operator.
pub fn signatures_queue(queue: &str) -> String {
    format!("{queue}.signatures")
}
