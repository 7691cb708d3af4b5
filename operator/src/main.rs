//! Entry point of the operator; the wiring lives in the library (`app.rs`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bucket_av_operator::Config::parse_and_run().await
}
