//! Tests of the policy as a whole: defaults from a minimal YAML, `validate()` against each rule, and
//! the generated CRD, whose CEL rules are evaluated here the way the API server evaluates them.

use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResourceExt;
use kube::core::cel::{Validator, apply_defaults, compile_schema, estimate_rule_cost};
use serde_json::{Value, json};

use crate::*;

const MINIMAL_SPEC: &str = r#"
minio:
  endpoint: http://minio.minio.svc:9000
  credentialsSecret:
    name: minio-creds
buckets:
  - name: uploads
rabbitmq:
  urlSecret:
    name: rabbitmq
scanner:
  sidecar: {}
"#;

fn minimal_spec() -> BucketScanPolicySpec {
    serde_norway::from_str(MINIMAL_SPEC).unwrap()
}

fn policy(spec: BucketScanPolicySpec) -> BucketScanPolicy {
    let mut policy = BucketScanPolicy::new("uploads", spec);
    policy.metadata.namespace = Some("media".to_owned());
    policy
}

fn crd_schema() -> Value {
    let crd = BucketScanPolicy::crd();
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|schema| schema.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.unwrap()).unwrap()
}

fn crd_json() -> Value {
    serde_json::to_value(BucketScanPolicy::crd()).unwrap()
}

/// The messages of the CEL rules that refuse `spec`, after the schema's defaults are applied as
/// the API server would.
fn cel_messages(spec: &Value) -> Vec<String> {
    let object = json!({
        "apiVersion": "bucketav.dev/v1alpha1",
        "kind": "BucketScanPolicy",
        "metadata": {"name": "uploads", "namespace": "media"},
        "spec": spec,
    });
    match Validator::new().validate(&crd_schema(), &object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|error| error.message.clone()).collect(),
    }
}

/// Every `x-kubernetes-validations` entry in `schema`, with the path of its node.
fn cel_rules(schema: &Value, path: &str, found: &mut Vec<(String, Value)>) {
    if let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) {
        found.extend(rules.iter().map(|rule| (path.to_owned(), rule.clone())));
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            cel_rules(property, &format!("{path}.{name}"), found);
        }
    }
    if let Some(items) = schema.get("items") {
        cel_rules(items, &format!("{path}[]"), found);
    }
}

#[test]
fn defaults_fill_in_from_a_minimal_policy() {
    let spec = minimal_spec();
    assert_eq!(spec.minio.region, "us-east-1");
    assert_eq!(spec.minio.credentials_secret.access_key_key, "accessKey");
    assert_eq!(spec.minio.credentials_secret.secret_key_key, "secretKey");
    assert_eq!(spec.minio.ca_bundle, None);
    assert_eq!(spec.buckets[0].prefix, None);
    assert_eq!(spec.notification.mode, NotificationMode::Managed);
    assert_eq!(spec.notification.target_id, None);
    assert!(!spec.notification.allow_restart);
    assert_eq!(spec.notification.queue_dir, "/data/.bucket-av-events");
    assert_eq!(spec.rabbitmq.url_secret.key, "url");
    assert_eq!(spec.rabbitmq.ca_bundle, None);
    assert_eq!(spec.rabbitmq.exchange, "bucket-av.events");
    assert_eq!(spec.rabbitmq.exchange_type, ExchangeType::Direct);
    assert_eq!(spec.rabbitmq.queue, None);
    assert_eq!(spec.rabbitmq.delivery_limit, 10);
    let sidecar = spec.scanner.sidecar.as_ref().unwrap();
    assert_eq!(sidecar.image, "docker.io/clamav/clamav:1.4");
    assert_eq!((&sidecar.resources, &sidecar.signatures), (&None, &None));
    assert_eq!(spec.scanner.max_object_size, Quantity("1Gi".to_owned()));
    assert_eq!(quantity_bytes(&spec.scanner.max_object_size), Some(1 << 30));
    assert_eq!(spec.scanner.stream_max_bytes, None);
    assert_eq!(spec.scanner.scan_timeout_seconds, 600);
    assert_eq!(spec.scanner.chunk_bytes, 256 * 1024);
    assert!(spec.actions.tagging.enabled);
    assert_eq!(spec.actions.tagging.prefix, "av-");
    assert_eq!((spec.actions.on_infected, spec.actions.on_unscannable), (ObjectAction::None, ObjectAction::None));
    assert_eq!((&spec.actions.quarantine_bucket, &spec.actions.webhook), (&None, &None));
    let workers = &spec.workers;
    assert_eq!(workers.image, None);
    assert_eq!((workers.concurrency, workers.min_replicas, workers.max_replicas), (4, 1, 10));
    assert_eq!(workers.target_queue_depth, 20);
    assert_eq!(workers.scale_down_stabilization_seconds, 300);
    assert_eq!(workers.drain_seconds, 30);
    assert_eq!(spec.deletion_policy, DeletionPolicy::Retain);
    spec.validate().unwrap();
    assert_eq!(cel_messages(&serde_norway::from_str(MINIMAL_SPEC).unwrap()), Vec::<String>::new());
}

#[test]
fn nested_defaults_match_an_empty_object() {
    let webhook: WebhookSpec = serde_json::from_value(json!({"url": "https://hook"})).unwrap();
    assert_eq!((webhook.attempts, webhook.report_clean, webhook.secret_ref), (4, false, None));
    let secret: WebhookSecretRef = serde_json::from_value(json!({"name": "hook"})).unwrap();
    assert_eq!(secret.key, "secret");
    let ca: CaBundleRef = serde_json::from_value(json!({"name": "ca"})).unwrap();
    assert_eq!((ca.kind, ca.key.as_str()), (CaBundleSource::ConfigMap, "ca.crt"));
    assert_eq!(serde_json::from_value::<NotificationSpec>(json!({})).unwrap(), NotificationSpec::default());
    assert_eq!(serde_json::from_value::<ActionsSpec>(json!({})).unwrap(), ActionsSpec::default());
    assert_eq!(serde_json::from_value::<TaggingSpec>(json!({})).unwrap(), TaggingSpec::default());
    assert_eq!(serde_json::from_value::<WorkersSpec>(json!({})).unwrap(), WorkersSpec::default());
}

#[test]
fn schema_defaults_equal_serde_defaults() {
    // What the API server stores for a minimal policy must read back as the same spec that serde
    // builds from the minimal YAML, so the operator sees the same values either way.
    let minimal: Value = serde_norway::from_str(MINIMAL_SPEC).unwrap();
    let object = json!({"apiVersion": "bucketav.dev/v1alpha1", "kind": "BucketScanPolicy",
        "metadata": {"name": "uploads"}, "spec": minimal});
    let defaulted = apply_defaults(&crd_schema(), &object);
    let from_server: BucketScanPolicySpec = serde_json::from_value(defaulted["spec"].clone()).unwrap();
    assert_eq!(from_server, minimal_spec());
    assert_eq!(defaulted["spec"]["actions"]["tagging"]["prefix"], "av-");
    assert_eq!(defaulted["spec"]["scanner"]["maxObjectSize"], "1Gi");
    assert_eq!(defaulted["spec"]["scanner"]["sidecar"]["image"], "docker.io/clamav/clamav:1.4");
}

#[test]
fn a_spec_round_trips_through_json_without_nulls() {
    let spec = minimal_spec();
    let json = serde_json::to_string(&spec).unwrap();
    assert!(!json.contains("null"), "{json}");
    assert_eq!(serde_json::from_str::<BucketScanPolicySpec>(&json).unwrap(), spec);
}

/// One broken spec: how to break it and the message both `validate()` and the CRD give.
struct InvalidCase {
    name: &'static str,
    edit: fn(&mut Value),
    message: &'static str,
}

fn invalid_cases() -> Vec<InvalidCase> {
    vec![
        InvalidCase {
            name: "quarantine on infected without a bucket",
            edit: |spec| spec["actions"] = json!({"onInfected": "Quarantine"}),
            message: messages::QUARANTINE_WITHOUT_BUCKET,
        },
        InvalidCase {
            name: "quarantine on unscannable without a bucket",
            edit: |spec| spec["actions"] = json!({"onUnscannable": "Quarantine"}),
            message: messages::QUARANTINE_WITHOUT_BUCKET,
        },
        InvalidCase {
            name: "quarantine bucket is scanned",
            edit: |spec| spec["actions"] = json!({"onInfected": "Quarantine", "quarantineBucket": "uploads"}),
            message: messages::QUARANTINE_IS_SCANNED,
        },
        InvalidCase {
            name: "min replicas above max",
            edit: |spec| spec["workers"] = json!({"minReplicas": 5, "maxReplicas": 2}),
            message: messages::MIN_ABOVE_MAX_REPLICAS,
        },
        InvalidCase {
            name: "min replicas above the default max",
            edit: |spec| spec["workers"] = json!({"minReplicas": 11}),
            message: messages::MIN_ABOVE_MAX_REPLICAS,
        },
        InvalidCase {
            name: "minio endpoint without scheme",
            edit: |spec| spec["minio"]["endpoint"] = json!("minio.minio.svc:9000"),
            message: messages::BAD_MINIO_ENDPOINT,
        },
        InvalidCase {
            name: "webhook url with another scheme",
            edit: |spec| spec["actions"] = json!({"webhook": {"url": "ftp://hooks.example.com/x"}}),
            message: messages::BAD_WEBHOOK_URL,
        },
        InvalidCase {
            name: "signature mirror with another scheme",
            edit: |spec| spec["scanner"]["sidecar"]["signatures"] = json!({"mirror": "ftp://mirror.example.com"}),
            message: messages::BAD_MIRROR_URL,
        },
        InvalidCase {
            name: "both sidecar and external",
            edit: |spec| spec["scanner"]["external"] = json!({"address": "clamd:3310"}),
            message: messages::SCANNER_CHOICE,
        },
        InvalidCase {
            name: "neither sidecar nor external",
            edit: |spec| spec["scanner"] = json!({}),
            message: messages::SCANNER_CHOICE,
        },
        InvalidCase {
            name: "both signature sources",
            edit: |spec| {
                spec["scanner"]["sidecar"]["signatures"] =
                    json!({"configMap": "sigs", "mirror": "https://mirror.example.com"});
            },
            message: messages::SIGNATURES_CHOICE,
        },
        InvalidCase {
            name: "no signature source",
            edit: |spec| spec["scanner"]["sidecar"]["signatures"] = json!({}),
            message: messages::SIGNATURES_CHOICE,
        },
        InvalidCase {
            name: "clamd address without port",
            edit: |spec| spec["scanner"] = json!({"external": {"address": "clamd.av.svc"}}),
            message: messages::BAD_CLAMD_ADDRESS,
        },
        InvalidCase {
            name: "clamd socket path that is relative",
            edit: |spec| spec["scanner"] = json!({"external": {"address": "unix://run/clamd.sock"}}),
            message: messages::BAD_CLAMD_ADDRESS,
        },
        InvalidCase {
            name: "relative queue dir",
            edit: |spec| spec["notification"] = json!({"queueDir": "data/events"}),
            message: messages::RELATIVE_QUEUE_DIR,
        },
        InvalidCase {
            name: "existing target without an id",
            edit: |spec| spec["notification"] = json!({"mode": "Existing"}),
            message: messages::EXISTING_WITHOUT_TARGET_ID,
        },
        InvalidCase {
            name: "reserved exchange",
            edit: |spec| spec["rabbitmq"]["exchange"] = json!("amq.topic"),
            message: messages::RESERVED_EXCHANGE,
        },
        InvalidCase {
            name: "reserved queue",
            edit: |spec| spec["rabbitmq"]["queue"] = json!("amq.scan"),
            message: messages::RESERVED_QUEUE,
        },
        InvalidCase {
            name: "zero max object size",
            edit: |spec| spec["scanner"]["maxObjectSize"] = json!(0),
            message: messages::BAD_MAX_OBJECT_SIZE,
        },
        InvalidCase {
            name: "negative max object size",
            edit: |spec| spec["scanner"]["maxObjectSize"] = json!("-1Gi"),
            message: messages::BAD_MAX_OBJECT_SIZE,
        },
        InvalidCase {
            name: "max object size that is no quantity",
            edit: |spec| spec["scanner"]["maxObjectSize"] = json!("one gigabyte"),
            message: messages::BAD_MAX_OBJECT_SIZE,
        },
        InvalidCase {
            name: "zero stream max bytes",
            edit: |spec| spec["scanner"]["streamMaxBytes"] = json!("0Mi"),
            message: messages::BAD_STREAM_MAX_BYTES,
        },
        InvalidCase {
            name: "protection without tagging",
            edit: |spec| {
                spec["protection"] = json!({"enabled": true});
                spec["actions"] = json!({"tagging": {"enabled": false}});
            },
            message: messages::PROTECTION_WITHOUT_TAGGING,
        },
        InvalidCase {
            name: "protection with a wildcard in the tag prefix",
            edit: |spec| {
                spec["protection"] = json!({"enabled": true, "users": ["app"]});
                spec["actions"] = json!({"tagging": {"prefix": "av*"}});
            },
            message: messages::PROTECTION_PREFIX_PATTERN,
        },
        InvalidCase {
            name: "a pod label the operator selects its workers by",
            edit: |spec| {
                spec["workers"] = json!({"podLabels": {"team": "media", "app.kubernetes.io/instance": "other"}})
            },
            message: messages::RESERVED_POD_LABEL,
        },
        InvalidCase {
            name: "a pod annotation under the operator's prefix",
            edit: |spec| spec["workers"] = json!({"podAnnotations": {"bucketav.dev/secret-data": "x"}}),
            message: messages::RESERVED_POD_ANNOTATION,
        },
        InvalidCase {
            name: "empty protected user name",
            edit: |spec| spec["protection"] = json!({"enabled": true, "users": [""]}),
            message: messages::BAD_PRINCIPAL_NAME,
        },
    ]
}

#[test]
fn validate_and_the_crd_refuse_each_invalid_policy_with_the_same_message() {
    for case in invalid_cases() {
        let mut spec: Value = serde_norway::from_str(MINIMAL_SPEC).unwrap();
        (case.edit)(&mut spec);

        let parsed: BucketScanPolicySpec = serde_json::from_value(spec.clone()).unwrap();
        let error = parsed.validate().expect_err(case.name);
        assert!(error.to_string().starts_with(case.message), "{}: validate() said {error}", case.name);

        let refusals = cel_messages(&spec);
        assert_eq!(refusals, [case.message], "{}: the CRD's CEL rules said {refusals:?}", case.name);
    }
}

#[test]
fn valid_variations_pass_both_checks() {
    let variations: [fn(&mut Value); 12] = [
        |spec| {
            spec["workers"] = json!({
                "imagePullSecrets": [{"name": "registry-credentials"}],
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "scanning", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                ]}}},
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
                ],
                "priorityClassName": "scanning",
                "podLabels": {"team": "media", "example.com/cost-center": "42"},
                "podAnnotations": {"prometheus.io/scrape": "true"},
            });
        },
        |spec| spec["protection"] = json!({"enabled": true, "users": ["app"], "groups": ["uploaders"]}),
        // A wildcard in the prefix matters only while protection is on.
        |spec| {
            spec["protection"] = json!({"enabled": false, "requireCleanToRead": false});
            spec["actions"] = json!({"tagging": {"prefix": "av*"}});
        },
        |spec| spec["actions"] = json!({"onInfected": "Quarantine", "quarantineBucket": "quarantine"}),
        |spec| spec["actions"] = json!({"onInfected": "Delete", "onUnscannable": "Delete"}),
        |spec| spec["workers"] = json!({"minReplicas": 0, "maxReplicas": 1}),
        |spec| spec["scanner"] = json!({"external": {"address": "tcp://clamd.av.svc:3310"}}),
        |spec| spec["scanner"] = json!({"external": {"address": "unix:///run/clamav/clamd.ctl"}}),
        |spec| spec["scanner"] = json!({"external": {"address": "[fd00::1]:3310"}, "maxObjectSize": 1048576}),
        |spec| spec["scanner"]["sidecar"]["signatures"] = json!({"configMap": "clamav-db"}),
        |spec| spec["notification"] = json!({"mode": "Existing", "targetId": "PRIMARY"}),
        |spec| spec["minio"]["endpoint"] = json!("https://minio.example.com"),
    ];
    for (index, edit) in variations.iter().enumerate() {
        let mut spec: Value = serde_norway::from_str(MINIMAL_SPEC).unwrap();
        edit(&mut spec);
        let parsed: BucketScanPolicySpec = serde_json::from_value(spec.clone()).unwrap();
        assert_eq!(parsed.validate(), Ok(()), "variation {index}");
        assert_eq!(cel_messages(&spec), Vec::<String>::new(), "variation {index}");
    }
}

#[test]
fn validate_refuses_what_the_schema_patterns_and_ranges_refuse() {
    type SpecEdit = fn(&mut BucketScanPolicySpec);
    let cases: [(SpecEdit, &str); 14] = [
        (|spec| spec.buckets[0].name = "Uploads".into(), "buckets[0].name"),
        (|spec| spec.buckets[0].name = "ab".into(), "buckets[0].name"),
        (|spec| spec.buckets[0].name = "-uploads".into(), "buckets[0].name"),
        (|spec| spec.buckets.clear(), "buckets must list 1 to 100"),
        (|spec| spec.actions.quarantine_bucket = Some("Quarantine_1".into()), "actions.quarantineBucket"),
        (|spec| spec.notification.target_id = Some("bad-id".into()), "notification.targetId"),
        (|spec| spec.actions.tagging.prefix = "a=b".into(), "actions.tagging.prefix"),
        (|spec| spec.rabbitmq.delivery_limit = 1, "rabbitmq.deliveryLimit is 1"),
        (|spec| spec.workers.concurrency = 0, "workers.concurrency is 0"),
        (|spec| spec.workers.priority_class_name = Some("High".into()), "workers.priorityClassName"),
        (
            |spec| spec.workers.image_pull_secrets = vec![LocalObjectReference { name: "Bad_Name".into() }],
            "workers.imagePullSecrets[0].name",
        ),
        (|spec| _ = spec.workers.node_selector.insert("zone/".into(), "a".into()), "workers.nodeSelector"),
        (|spec| _ = spec.workers.pod_labels.insert("team".into(), "-media".into()), "workers.podLabels[team]"),
        (|spec| _ = spec.workers.pod_annotations.insert("a b".into(), "x".into()), "workers.podAnnotations"),
    ];
    for (edit, expected) in cases {
        let mut spec = minimal_spec();
        edit(&mut spec);
        let error = spec.validate().expect_err(expected);
        assert!(error.to_string().starts_with(expected), "expected {expected:?}, got {error}");
    }
}

#[test]
fn crd_has_names_columns_status_and_storage() {
    let crd = crd_json();
    assert_eq!(crd["metadata"]["name"], "bucketscanpolicies.bucketav.dev");
    assert_eq!(crd["spec"]["group"], "bucketav.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["bsp"]));
    assert_eq!(crd["spec"]["names"]["kind"], "BucketScanPolicy");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!((&version["served"], &version["storage"]), (&json!(true), &json!(true)));
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<(&str, &str)> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|column| (column["name"].as_str().unwrap(), column["jsonPath"].as_str().unwrap()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Ready", r#".status.conditions[?(@.type=="Ready")].status"#),
            ("Reason", r#".status.conditions[?(@.type=="Ready")].reason"#),
            ("Buckets", ".status.buckets"),
            ("Queue Depth", ".status.queueDepth"),
            ("Replicas", ".status.replicas"),
            ("Coverage", ".status.coverage.summary"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
    let conditions = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
}

#[test]
fn crd_carries_every_cel_rule_and_each_compiles_within_budget() {
    let schema = crd_schema();
    let mut rules = Vec::new();
    cel_rules(&schema, "", &mut rules);
    let messages: Vec<&str> = rules.iter().map(|(_, rule)| rule["message"].as_str().unwrap()).collect();
    for expected in [
        messages::QUARANTINE_WITHOUT_BUCKET,
        messages::QUARANTINE_IS_SCANNED,
        messages::MIN_ABOVE_MAX_REPLICAS,
        messages::BAD_MINIO_ENDPOINT,
        messages::BAD_WEBHOOK_URL,
        messages::BAD_MIRROR_URL,
        messages::SCANNER_CHOICE,
        messages::SIGNATURES_CHOICE,
        messages::BAD_CLAMD_ADDRESS,
        messages::RELATIVE_QUEUE_DIR,
        messages::EXISTING_WITHOUT_TARGET_ID,
        messages::RESERVED_EXCHANGE,
        messages::RESERVED_QUEUE,
        messages::BAD_MAX_OBJECT_SIZE,
        messages::BAD_STREAM_MAX_BYTES,
        messages::RESERVED_POD_LABEL,
        messages::RESERVED_POD_ANNOTATION,
    ] {
        assert!(messages.contains(&expected), "no CEL rule says {expected:?}");
    }
    let paths: Vec<&str> = rules.iter().map(|(path, _)| path.as_str()).collect();
    assert!(paths.contains(&".spec") && paths.contains(&".spec.actions") && paths.contains(&".spec.workers"));

    let compiled = compile_schema(&schema);
    fn assert_compiles(node: &kube::core::cel::CompiledSchema) {
        assert!(node.compilation_errors().is_empty(), "{:?}", node.compilation_errors());
        node.properties.values().for_each(assert_compiles);
        node.items.iter().for_each(|items| assert_compiles(items));
    }
    assert_compiles(&compiled);
    for (_, rule) in &rules {
        let rule = rule["rule"].as_str().unwrap();
        let warnings = estimate_rule_cost(rule, &compiled);
        assert!(warnings.is_empty(), "{rule}: {warnings:?}");
    }
}

#[test]
fn derived_names_follow_the_policy_and_yield_to_the_spec() {
    let mut policy = policy(minimal_spec());
    assert_eq!(policy.queue_name(), "bucket-av.media.uploads");
    assert_eq!(policy.routing_key(), policy.queue_name());
    assert_eq!(policy.target_id(), default_target_id("media", "uploads"));
    assert_eq!(policy.target_arn(), format!("arn:minio:sqs:us-east-1:{}:amqp", policy.target_id()));
    assert!(policy.manages_target());
    policy.spec.rabbitmq.queue = Some("scan".into());
    policy.spec.notification.target_id = Some("PRIMARY".into());
    assert_eq!((policy.queue_name(), policy.target_id()), ("scan".to_owned(), "PRIMARY".to_owned()));
    assert_eq!(dead_letter_queue(&policy.queue_name()), "scan.dead");
}

#[test]
fn set_condition_keeps_the_transition_time_while_the_status_holds() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    let condition = |status: &str, reason: &str, seconds: i64| Condition {
        type_: condition_types::READY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(Timestamp::from_second(seconds).unwrap()),
    };
    let mut status = BucketScanPolicyStatus::default();
    assert!(!status.is_ready());
    status.set_condition(condition("False", "Starting", 100));
    status.set_condition(condition("False", "QueueMissing", 200));
    assert_eq!(status.conditions.len(), 1);
    let ready = status.condition(condition_types::READY).unwrap();
    assert_eq!((ready.reason.as_str(), ready.last_transition_time.0.as_second()), ("QueueMissing", 100));
    status.set_condition(condition("True", "Ready", 300));
    assert!(status.is_ready());
    assert_eq!(status.condition(condition_types::READY).unwrap().last_transition_time.0.as_second(), 300);
}
