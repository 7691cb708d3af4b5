//! The example policy in crds/examples must stay a valid, realistic policy: it parses into the
//! Rust types, passes `validate()`, and passes the CRD's CEL rules as the API server runs them.

use bucket_av_crds::{BucketScanPolicy, ObjectAction, quantity_bytes};
use kube::CustomResourceExt;
use kube::ResourceExt;
use kube::core::cel::Validator;

const EXAMPLE: &str = include_str!("../examples/bucketscanpolicy.yaml");

#[test]
fn example_policy_parses_and_validates() {
    let policy: BucketScanPolicy = serde_norway::from_str(EXAMPLE).expect("the example parses as a BucketScanPolicy");
    assert_eq!(policy.name_any(), "uploads");
    assert_eq!(policy.namespace().as_deref(), Some("media"));
    policy.spec.validate().expect("the example passes validate()");

    assert_eq!(policy.spec.buckets.len(), 2);
    assert_eq!(policy.spec.actions.on_infected, ObjectAction::Quarantine);
    assert_eq!(quantity_bytes(&policy.spec.scanner.max_object_size), Some(2 << 30));
    assert_eq!(policy.queue_name(), "media-uploads-scan");
    assert!(policy.target_id().starts_with("BAVS_"));
}

#[test]
fn example_policy_passes_the_crd_cel_rules() {
    let crd = BucketScanPolicy::crd();
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|schema| schema.open_api_v3_schema.as_ref());
    let schema = serde_json::to_value(schema.expect("the CRD has a schema")).unwrap();
    let object: serde_json::Value = serde_norway::from_str(EXAMPLE).unwrap();
    if let Err(errors) = Validator::new().validate(&schema, &object, None) {
        panic!("the example breaks CEL rules: {errors:?}");
    }
}
