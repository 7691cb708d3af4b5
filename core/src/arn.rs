//! The ARNs MinIO gives its notification targets, which bucket notification entries name.

/// The ARN MinIO gives an AMQP notification target.
pub fn amqp_target_arn(region: &str, target_id: &str) -> String {
    format!("arn:minio:sqs:{region}:{target_id}:amqp")
}
