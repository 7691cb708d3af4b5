//! Prints the BucketScanPolicy CustomResourceDefinition as YAML:
//! `just generate`, which writes `crds/bucketscanpolicy.yaml` and the chart's copy.

fn main() -> Result<(), serde_norway::Error> {
    print!("{}", bucket_av_crds::crd_yaml()?);
    Ok(())
}
