//! The committed CRD must be what `crdgen` prints today, so that the YAML applied to clusters and
//! shipped in the chart never drifts from the Rust types the operator is built with.

#[test]
fn committed_crd_matches_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bucketscanpolicy.yaml");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = bucket_av_crds::crd_yaml().expect("the CRD serializes to YAML");
    assert!(
        committed == generated,
        "crds/bucketscanpolicy.yaml is out of date with the BucketScanPolicy types; regenerate it (and the \
         chart's copy) with `just generate` and commit the result"
    );
}
