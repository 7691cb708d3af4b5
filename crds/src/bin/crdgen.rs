//! Prints the BucketScanPolicy CustomResourceDefinition as YAML:
//! `cargo run -p bucket-av-crds --bin crdgen > crds/bucketscanpolicy.yaml`.

fn main() -> Result<(), serde_norway::Error> {
    print!("{}", bucket_av_crds::crd_yaml()?);
    Ok(())
}
