//! What the admin-API suites share: a client for the local stack's MinIO as its root user.

use bucket_av_core::Redacted;
use bucket_av_minio_admin::AdminClient;
use bucket_av_testing::Stack;

pub fn admin(stack: &Stack) -> AdminClient {
    AdminClient::new(
        stack.var("BAVS_S3_ENDPOINT"),
        stack.var("BAVS_S3_ACCESS_KEY"),
        Redacted::new(stack.var("BAVS_S3_SECRET_KEY")),
        None,
    )
    .expect("the stack's endpoint is valid")
    .with_region(stack.var("BAVS_S3_REGION"))
}
