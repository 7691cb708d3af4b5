//! The chart's monitoring kit (values `monitoring.*`): its PrometheusRule and its Grafana
//! dashboard checked with promtool (built by testing/monitoring/provision-promtool.sh) against
//! what real workers on the real stack export. A renamed metric or a wrong label makes an alert
//! or a panel come up empty here, not in production.
//!
//! The workers run as processes, the way their pods run them; Prometheus is not run: promtool
//! evaluates the rules over the workers' scraped samples, to which the test adds the target
//! labels the chart's PodMonitor gives them (job, namespace, pod, policy).
//! The operator is not started (that needs the control plane): its series are made from its
//! metric names, which the test checks against its registry in operator/src/metrics.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bucket_av_testing::chart::{CHART, repo_path};
use bucket_av_testing::private_clamd::PrivateClamd;
use bucket_av_testing::process::{free_port, workspace_binary};
use bucket_av_testing::tools::{pinned_version, tools_dir};
use bucket_av_testing::{EICAR, ServiceProcess, Stack, WebhookReceiver, WorkerProcess, unique_name, wait_for};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::{Value, json};

const PROMTOOL_SCRIPT: &str = include_str!("../monitoring/provision-promtool.sh");
const CLUSTER_PROVISION_SCRIPT: &str = include_str!("../cluster/provision.sh");
const SWITCHES: [&str; 3] =
    ["monitoring.podMonitor.enabled", "monitoring.prometheusRule.enabled", "monitoring.dashboard.enabled"];
/// The job the PodMonitor gives worker targets (its jobLabel: the pods' app.kubernetes.io/name).
const WORKER_JOB: &str = "bucket-av-worker";
const WORKER_NAMESPACE: &str = "team-a";
const OPERATOR_NAMESPACE: &str = "bucket-av-system";
/// Minutes of series handed to promtool, one sample a minute. Counters are at their
/// "before" value up to STEP_MINUTE and at the scraped value from there on.
const SERIES_MINUTES: u64 = 90;
const STEP_MINUTE: u64 = 21;
const VERDICT_TIMEOUT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ tools ----

fn promtool() -> PathBuf {
    let version = pinned_version(PROMTOOL_SCRIPT, "PROMTOOL_VERSION");
    let binary = tools_dir().join(format!("promtool-{version}/promtool"));
    assert!(
        binary.is_file(),
        "promtool {version} is not built at {}: run `bash testing/monitoring/provision-promtool.sh`",
        binary.display()
    );
    binary
}

/// helm as `just cluster-provision` builds it (BAVS_HELM overrides); `helm template` needs no cluster.
fn helm() -> PathBuf {
    let binary = std::env::var("BAVS_HELM").map(PathBuf::from).unwrap_or_else(|_| {
        let version = pinned_version(CLUSTER_PROVISION_SCRIPT, "HELM_VERSION");
        tools_dir().join(format!("helm-{version}/helm"))
    });
    assert!(binary.is_file(), "helm is not built at {}: run `just cluster-provision`", binary.display());
    binary
}

/// `helm template` of the chart with `--set` values: the rendered objects.
fn render(sets: &[&str]) -> Vec<Value> {
    let mut command = Command::new(helm());
    command.args(["template", "monitoring-test", &repo_path(CHART).to_string_lossy(), "--namespace", "bav"]);
    for set in sets {
        command.args(["--set", set]);
    }
    let output = command.output().expect("run helm template");
    assert!(output.status.success(), "helm template {sets:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("helm prints UTF-8");
    text.split("\n---")
        .filter_map(|document| serde_norway::from_str::<Value>(document).ok())
        .filter(|object| object.is_object())
        .collect()
}

fn all_switches_on(extra: &[&str]) -> Vec<Value> {
    let mut sets: Vec<String> = SWITCHES.iter().map(|switch| format!("{switch}=true")).collect();
    sets.extend(extra.iter().map(|set| set.to_string()));
    render(&sets.iter().map(String::as_str).collect::<Vec<_>>())
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|object| object["kind"] == kind).collect()
}

/// The rendered PrometheusRule's `spec.groups`, as a promtool rule file.
fn rule_groups(objects: &[Value]) -> Value {
    let rules = of_kind(objects, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    json!({ "groups": rules[0]["spec"]["groups"].clone() })
}

/// Every alert of the rendered rule: name -> its `for` in minutes.
fn alerts(groups: &Value) -> BTreeMap<String, u64> {
    groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .filter_map(|rule| {
            rule["alert"].as_str().map(|name| (name.to_owned(), minutes(rule["for"].as_str().unwrap_or("0m"))))
        })
        .collect()
}

fn minutes(duration: &str) -> u64 {
    if let Some(hours) = duration.strip_suffix('h') {
        return hours.parse::<u64>().expect("a whole number of hours") * 60;
    }
    if let Some(seconds) = duration.strip_suffix('s') {
        return seconds.parse::<u64>().expect("a whole number of seconds").div_ceil(60);
    }
    duration.strip_suffix('m').and_then(|value| value.parse().ok()).unwrap_or_else(|| panic!("duration {duration}"))
}

/// The dashboard's panel queries, with Grafana's variables as "everything" and a 5 minute rate.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_path("charts/bucket-av-scanner/dashboards/bucket-av-scanner.json"))
        .expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$operator_namespace", ".*")
                .replace("$namespace", ".*")
                .replace("$policy", ".*");
            let name = format!("panel {} ({}) {}", panel["id"], panel["title"].as_str().unwrap_or(""), target["refId"]);
            queries.push((name, expr));
        }
    }
    queries
}

/// Runs promtool; panics with its output when it fails.
fn promtool_run(args: &[&str], dir: &Path) -> String {
    let output = Command::new(promtool()).args(args).current_dir(dir).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_json(dir: &Path, name: &str, value: &Value) -> String {
    // JSON is YAML: promtool reads these files as they are.
    std::fs::write(dir.join(name), serde_json::to_string_pretty(value).unwrap()).unwrap();
    name.to_owned()
}

// ------------------------------------------------------------- the scrape ----

/// One sample of an OpenMetrics exposition.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
    /// A counter, or a histogram's bucket/sum/count: cumulative.
    cumulative: bool,
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            types.insert(parts.next().unwrap().to_owned(), parts.next().unwrap_or("").to_owned());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        // `name{a="x",b="y"} value` or `name value`; label values here never hold `}` or `,`.
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels: BTreeMap<String, String> = labels
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("label {pair} in {line}"));
                (key.to_owned(), value.trim_matches('"').to_owned())
            })
            .collect();
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|family| types.contains_key(*family)))
            .unwrap_or(name);
        let kind = types.get(family).map(String::as_str).unwrap_or("unknown");
        if name.ends_with("_created") {
            continue;
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value.parse().unwrap_or_else(|_| panic!("value of {line}")),
            cumulative: kind == "counter" || kind == "histogram",
        });
    }
    samples
}

/// A worker's scrape as a Prometheus target of the chart's PodMonitor.
struct Target {
    policy: String,
    samples: Vec<Sample>,
}

impl Target {
    async fn scrape(worker: &WorkerProcess, policy: &str) -> Self {
        Self { policy: policy.to_owned(), samples: parse_exposition(&worker.metrics().await) }
    }

    fn target_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("job".to_owned(), WORKER_JOB.to_owned()),
            ("namespace".to_owned(), WORKER_NAMESPACE.to_owned()),
            ("policy".to_owned(), self.policy.clone()),
            ("pod".to_owned(), format!("{}-worker-0", self.policy)),
            ("instance".to_owned(), format!("{}-worker-0:8080", self.policy)),
        ])
    }

    /// The target's series: `up` 1 throughout, gauges at their scraped value throughout, and
    /// cumulative samples unseen (a labelled counter exists only once incremented) or 0 up to
    /// STEP_MINUTE, then at their scraped value.
    fn input_series(&self) -> Vec<Value> {
        let mut series = vec![series_entry("up", &self.target_labels(), &format!("1x{SERIES_MINUTES}"))];
        for sample in &self.samples {
            let mut labels = self.target_labels();
            labels.extend(sample.labels.clone());
            let after = SERIES_MINUTES - STEP_MINUTE - 1;
            let values = if !sample.cumulative {
                format!("{}x{SERIES_MINUTES}", sample.value)
            } else if sample.labels.keys().any(|key| key != "le") {
                format!("_x{} {}x{after}", STEP_MINUTE - 1, sample.value)
            } else {
                format!("0x{} {}x{after}", STEP_MINUTE - 1, sample.value)
            };
            series.push(series_entry(&sample.name, &labels, &values));
        }
        series
    }
}

fn series_entry(name: &str, labels: &BTreeMap<String, String>, values: &str) -> Value {
    let labels: Vec<String> = labels.iter().map(|(key, value)| format!("{key}=\"{value}\"")).collect();
    json!({ "series": format!("{name}{{{}}}", labels.join(", ")), "values": values })
}

/// The operator's series, as its ServiceMonitor target: reconciles going on, and when `failing`,
/// reconcile failures every minute and a sweep that found objects without a verdict.
fn operator_series(failing: bool) -> Vec<Value> {
    let target = BTreeMap::from([
        ("job".to_owned(), "bucket-av-scanner-operator".to_owned()),
        ("namespace".to_owned(), OPERATOR_NAMESPACE.to_owned()),
        ("pod".to_owned(), "bucket-av-scanner-operator-0".to_owned()),
    ]);
    let with = |extra: &[(&str, &str)]| {
        let mut labels = target.clone();
        labels.extend(extra.iter().map(|(key, value)| (key.to_string(), value.to_string())));
        labels
    };
    let missing = bucket_av_core::coverage::Reason::Missing.as_str();
    let mut series = vec![
        series_entry("up", &target, &format!("1x{SERIES_MINUTES}")),
        series_entry("bucket_av_operator_reconciles_total", &target, &format!("0+2x{SERIES_MINUTES}")),
        series_entry("bucket_av_operator_coverage_objects_enqueued_total", &with(&[("reason", "stale")]), "0+1x90"),
    ];
    if failing {
        series.push(series_entry(
            "bucket_av_operator_reconcile_failures_total",
            &with(&[("kind", "SecretMissing")]),
            &format!("_x{} 1+1x{}", STEP_MINUTE - 1, SERIES_MINUTES - STEP_MINUTE - 1),
        ));
        series.push(series_entry(
            "bucket_av_operator_coverage_objects_enqueued_total",
            &with(&[("reason", missing)]),
            &format!("_x{} 3x{}", STEP_MINUTE - 1, SERIES_MINUTES - STEP_MINUTE - 1),
        ));
    }
    series
}

/// promql_expr_test entries: `expr` answers one sample with no labels, value 1, at `minute`.
fn answers_one(expr: &str, minute: u64) -> Value {
    json!({ "expr": expr, "eval_time": format!("{minute}m"), "exp_samples": [{ "labels": "{}", "value": 1 }] })
}

fn firing(alert: &str) -> String {
    format!("clamp_max(count(ALERTS{{alertname=\"{alert}\", alertstate=\"firing\"}}), 1)")
}

/// Runs `promtool test rules` over `tests` with the chart's rules; panics with promtool's report.
fn promtool_test(name: &str, groups: &Value, series: Vec<Value>, tests: Vec<Value>) {
    let dir = scratch_dir(name);
    let rules = write_json(&dir, "rules.yaml", groups);
    let test = json!({
        "rule_files": [rules],
        "evaluation_interval": "1m",
        "tests": [{ "interval": "1m", "input_series": series, "promql_expr_test": tests }],
    });
    let file = write_json(&dir, "test.yaml", &test);
    promtool_run(&["test", "rules", &file], &dir);
    std::fs::remove_dir_all(&dir).ok();
}

/// Metric names (`bucket_av_…`) a PromQL text refers to.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("bucket_av_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The names the operator's registry can export, read from its source: each `register("x", ...)`
/// under the prefix, as a gauge, a counter (`_total`) or a histogram (`_bucket`, `_sum`, `_count`).
fn operator_metric_names() -> BTreeSet<String> {
    let source = std::fs::read_to_string(repo_path("operator/src/metrics.rs")).expect("read operator/src/metrics.rs");
    let mut names = BTreeSet::new();
    for chunk in source.split("registry.register(").skip(1) {
        let name = chunk.split('"').nth(1).expect("a registered name");
        for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
            names.insert(format!("bucket_av_operator_{name}{suffix}"));
        }
    }
    names
}

// ------------------------------------------------------------------ tests ----

#[test]
fn monitoring_objects_render_only_when_switched_on_with_their_labels() {
    let off = render(&[]);
    for kind in ["PodMonitor", "PrometheusRule"] {
        assert!(of_kind(&off, kind).is_empty(), "a {kind} rendered with the switches off");
    }
    assert!(
        !of_kind(&off, "ConfigMap").iter().any(|map| map["metadata"]["labels"]["grafana_dashboard"].is_string()),
        "a dashboard ConfigMap rendered with the switches off"
    );

    let on = all_switches_on(&[
        "monitoring.podMonitor.labels.release=kube-prometheus",
        "monitoring.podMonitor.namespaceSelector.any=false",
        "monitoring.podMonitor.namespaceSelector.matchNames={team-a,team-b}",
        "monitoring.prometheusRule.labels.release=kube-prometheus",
        "monitoring.prometheusRule.alertLabels.team=storage",
        "monitoring.dashboard.sidecarLabel=dashboards",
        "monitoring.dashboard.sidecarLabelValue=bav",
        "monitoring.dashboard.namespace=grafana",
        "monitoring.dashboard.annotations.grafana_folder=Storage",
    ]);
    let pod_monitors = of_kind(&on, "PodMonitor");
    assert_eq!(pod_monitors.len(), 2, "the workers' and the signature mirror's");
    let named = |suffix: &str| {
        *pod_monitors
            .iter()
            .find(|monitor| monitor["metadata"]["name"].as_str().unwrap().ends_with(suffix))
            .unwrap_or_else(|| panic!("no PodMonitor *{suffix}"))
    };
    let pod_monitor = named("-workers");
    let mirror_monitor = named("-signatures");
    assert_eq!(mirror_monitor["metadata"]["labels"]["release"], "kube-prometheus");
    assert_eq!(mirror_monitor["spec"]["jobLabel"], "app.kubernetes.io/component");
    assert_eq!(mirror_monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], "signature-mirror");
    let without_mirror = all_switches_on(&["signatureMirror.enabled=false"]);
    assert_eq!(of_kind(&without_mirror, "PodMonitor").len(), 1, "no mirror, no mirror PodMonitor");
    assert!(!alerts(&rule_groups(&without_mirror)).contains_key(MIRROR_ALERT), "no mirror, no mirror alert");
    assert_eq!(pod_monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pod_monitor["metadata"]["labels"]["release"], "kube-prometheus");
    // The labels operator/src/workload.rs puts on every worker pod.
    assert_eq!(
        pod_monitor["spec"]["selector"]["matchLabels"],
        json!({ "app.kubernetes.io/name": "bucket-av-worker", "app.kubernetes.io/managed-by": "bucket-av-operator" })
    );
    assert_eq!(pod_monitor["spec"]["jobLabel"], "app.kubernetes.io/name");
    assert_eq!(pod_monitor["spec"]["namespaceSelector"], json!({ "any": false, "matchNames": ["team-a", "team-b"] }));
    let endpoint = &pod_monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!((endpoint["port"].as_str(), endpoint["path"].as_str()), (Some("http"), Some("/metrics")));
    assert_eq!(endpoint["relabelings"][0]["sourceLabels"][0], "__meta_kubernetes_pod_label_bucketav_dev_policy");
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "policy");
    let defaults = all_switches_on(&[]);
    let default_workers = of_kind(&defaults, "PodMonitor")
        .into_iter()
        .find(|monitor| monitor["metadata"]["name"].as_str().unwrap().ends_with("-workers"))
        .unwrap();
    assert_eq!(default_workers["spec"]["namespaceSelector"], json!({ "any": true }));

    let rule = of_kind(&on, "PrometheusRule")[0];
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus");
    let rules: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert!(!rules.is_empty());
    for rule in &rules {
        assert_eq!(rule["labels"]["team"], "storage", "{}", rule["alert"]);
        assert!(rule["labels"]["severity"].is_string(), "{}", rule["alert"]);
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation].as_str().is_some_and(|text| text.len() > 20),
                "{} {annotation}",
                rule["alert"]
            );
        }
        assert!(rule["annotations"]["description"].as_str().unwrap().contains("What to do"), "{}", rule["alert"]);
    }
    // An alert switched off is not rendered; thresholds and durations come from the values.
    let tuned = alerts(&rule_groups(&all_switches_on(&[
        "monitoring.prometheusRule.alerts.webhookFailures.enabled=false",
        "monitoring.prometheusRule.alerts.messagesHeld.for=42m",
    ])));
    assert!(!tuned.contains_key("BucketAVWebhookFailures"));
    assert_eq!(tuned["BucketAVMessagesHeld"], 42);

    let dashboards: Vec<&Value> = of_kind(&on, "ConfigMap")
        .into_iter()
        .filter(|map| map["metadata"]["name"].as_str().unwrap().ends_with("-dashboard"))
        .collect();
    assert_eq!(dashboards.len(), 1);
    let dashboard = dashboards[0];
    assert_eq!(dashboard["metadata"]["labels"]["dashboards"], "bav");
    assert_eq!(dashboard["metadata"]["namespace"], "grafana");
    assert_eq!(dashboard["metadata"]["annotations"]["grafana_folder"], "Storage");
    let file =
        std::fs::read_to_string(repo_path("charts/bucket-av-scanner/dashboards/bucket-av-scanner.json")).unwrap();
    let shipped: Value = serde_json::from_str(dashboard["data"]["bucket-av-scanner.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, serde_json::from_str::<Value>(&file).unwrap(), "the ConfigMap carries the dashboard file");
    let default_labels = &of_kind(&defaults, "ConfigMap")
        .into_iter()
        .find(|map| map["metadata"]["name"].as_str().unwrap().ends_with("-dashboard"))
        .unwrap()["metadata"]["labels"];
    assert_eq!(default_labels["grafana_dashboard"], "1");
}

#[test]
fn alert_rules_and_dashboard_queries_pass_promtool_check() {
    let groups = rule_groups(&all_switches_on(&["monitoring.prometheusRule.alerts.noWorkers.enabled=true"]));
    assert_eq!(
        alerts(&groups).keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "BucketAVMessagesDeadLettered",
            "BucketAVMessagesHeld",
            "BucketAVMissedEvents",
            "BucketAVNoWorkers",
            "BucketAVReconcileFailures",
            "BucketAVS3KeyRefused",
            "BucketAVSignatureDatabaseOld",
            "BucketAVSignatureMirrorStale",
            "BucketAVWebhookFailures",
            "BucketAVWorkerDown",
        ]
    );
    let dir = scratch_dir("promtool-check");
    let rules = write_json(&dir, "rules.yaml", &groups);
    promtool_run(&["check", "rules", &rules], &dir);
    let recording: Vec<Value> = dashboard_queries()
        .iter()
        .enumerate()
        .map(|(index, (_, expr))| json!({ "record": format!("dashboard:panel_query_{index}"), "expr": expr }))
        .collect();
    let dashboard =
        write_json(&dir, "dashboard.yaml", &json!({ "groups": [{ "name": "dashboard", "rules": recording }] }));
    promtool_run(&["check", "rules", &dashboard], &dir);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn operator_metrics_the_rules_and_dashboard_use_are_registered_by_the_operator() {
    let registered = operator_metric_names();
    assert!(registered.contains("bucket_av_operator_reconciles_total"), "reading the registry: {registered:?}");
    let groups = rule_groups(&all_switches_on(&[]));
    let mut used = metric_names(&groups.to_string());
    for (_, expr) in dashboard_queries() {
        used.extend(metric_names(&expr));
    }
    for name in used.iter().filter(|name| name.starts_with("bucket_av_operator_")) {
        assert!(registered.contains(name), "{name} is not a metric of the operator ({registered:?})");
    }
    // The label values the rules select by exist in the code that sets them.
    // (The others, dead-letter kinds and held reasons, come from the real scrapes of the stack test.)
    let worker_source: String = std::fs::read_dir(repo_path("worker/src"))
        .expect("read worker/src")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "rs"))
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    for value in ["\"s3_refused\"", "\"failed\""] {
        assert!(worker_source.contains(value), "the worker no longer sets {value}");
    }
}

// ------------------------------------------------------- the real workers ----

/// A watched bucket and a queue of its own (declared and bound like the operator's).
async fn bucket_and_queue(stack: &Stack, name: &str) -> (String, String) {
    let bucket = stack.watched_bucket(name, false).await;
    let queue = unique_name(&format!("test-{name}"));
    let connection = stack.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    stack.topology(&queue, 3).declare(&channel).await.expect("declare the test queue");
    connection.close(200, "done".into()).await.ok();
    (bucket, queue)
}

fn worker_args<'a>(bucket: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--bucket", bucket, "--delivery-limit", "3"];
    args.extend_from_slice(extra);
    args
}

/// Publishes `body` to `queue` only (the default exchange), as a producer that is not MinIO would.
async fn publish_raw(stack: &Stack, queue: &str, body: &[u8]) {
    let connection = stack.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, BasicProperties::default())
        .await
        .unwrap()
        .await
        .unwrap();
    connection.close(200, "done".into()).await.ok();
}

/// The sum of a metric's samples in a worker's scrape.
async fn metric_sum(worker: &WorkerProcess, name: &str, label: Option<&str>) -> f64 {
    parse_exposition(&worker.metrics().await)
        .iter()
        .filter(|sample| {
            sample.name == name && label.is_none_or(|label| sample.labels.values().any(|value| value == label))
        })
        .map(|sample| sample.value)
        .sum()
}

async fn wait_for_metric(worker: &WorkerProcess, name: &str, label: Option<&str>) {
    wait_for(&format!("{name} ({label:?}) above 0"), VERDICT_TIMEOUT, Duration::from_millis(200), async || {
        let value = metric_sum(worker, name, label).await;
        if value > 0.0 { Ok(()) } else { Err(format!("{value}")) }
    })
    .await;
}

#[tokio::test]
async fn alerts_and_panels_work_on_what_real_workers_export() {
    let stack = Stack::load();
    let worker_binary = workspace_binary("bucket-av-worker");

    // Workers scan with a clamd of the test's own: the stack's loads no versioned, dated
    // database, so only this one makes the workers report the database's age.
    let clamd = PrivateClamd::start(&stack, 100, &[]).await;
    let clamd_address = clamd.address();

    // A healthy worker: clean and infected uploads scanned, their reports delivered.
    let receiver = WebhookReceiver::start().await;
    let (healthy_bucket, healthy_queue) = bucket_and_queue(&stack, "mon-healthy").await;
    let webhook = receiver.url();
    let healthy = WorkerProcess::start(
        &worker_binary,
        &stack,
        &healthy_queue,
        &worker_args(
            &healthy_bucket,
            &["--webhook-url", webhook.as_str(), "--report-clean", "true", "--clamd", clamd_address.as_str()],
        ),
    )
    .await;
    stack.put(&healthy_bucket, "clean.txt", b"nothing to see".to_vec()).await;
    stack.put(&healthy_bucket, "eicar.com", EICAR.to_vec()).await;
    for key in ["clean.txt", "eicar.com"] {
        stack.wait_for_verdict(&healthy_bucket, key, None, VERDICT_TIMEOUT).await;
    }
    wait_for_metric(&healthy, "bucket_av_worker_webhook_deliveries_total", Some("delivered")).await;
    wait_for_database_age(&healthy).await;
    let healthy_target = Target::scrape(&healthy, "healthy").await;

    // A worker whose webhook receiver fails: the report is not delivered, the message is retried
    // up to the delivery limit and dead-lettered; and a message that is not an event at all.
    let failing_receiver = WebhookReceiver::start().await;
    failing_receiver.fail_with(Some(500));
    let failing_webhook = failing_receiver.url();
    let (webhook_bucket, webhook_queue) = bucket_and_queue(&stack, "mon-webhook").await;
    let webhook_worker = WorkerProcess::start(
        &worker_binary,
        &stack,
        &webhook_queue,
        &worker_args(
            &webhook_bucket,
            &["--webhook-url", failing_webhook.as_str(), "--webhook-attempts", "1", "--clamd", clamd_address.as_str()],
        ),
    )
    .await;
    stack.put(&webhook_bucket, "eicar.com", EICAR.to_vec()).await;
    publish_raw(&stack, &webhook_queue, b"not an event").await;
    wait_for_metric(&webhook_worker, "bucket_av_worker_webhook_deliveries_total", Some("failed")).await;
    wait_for_metric(&webhook_worker, "bucket_av_worker_dead_lettered_total", None).await;
    wait_for_database_age(&webhook_worker).await;
    let webhook_target = Target::scrape(&webhook_worker, "webhook").await;

    // A worker whose clamd does not answer: it holds what it takes, unacknowledged.
    let (held_bucket, held_queue) = bucket_and_queue(&stack, "mon-held").await;
    let http = format!("127.0.0.1:{}", free_port());
    let closed_clamd = format!("127.0.0.1:{}", free_port());
    let mut command = tokio::process::Command::new(&worker_binary);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", std::env::var("WORKER_LOG").unwrap_or_else(|_| "info".into()))
        .env("BAVS_HTTP_ADDR", &http)
        .env("BAVS_QUEUE", &held_queue)
        .env("BAVS_CLAMD", &closed_clamd);
    for variable in [
        "BAVS_AMQP_URL",
        "BAVS_S3_ENDPOINT",
        "BAVS_S3_REGION",
        "BAVS_S3_ACCESS_KEY",
        "BAVS_S3_SECRET_KEY",
        "BAVS_EXCHANGE",
        "BAVS_EXCHANGE_TYPE",
        "BAVS_ROUTING_KEY",
    ] {
        command.env(variable, stack.var(variable));
    }
    command.args(worker_args(&held_bucket, &[]));
    let held_worker = WorkerProcess::from_command_unready(command, http, &held_queue).await;
    stack.put(&held_bucket, "waiting.txt", b"waits for clamd".to_vec()).await;
    wait_for_metric(&held_worker, "bucket_av_worker_messages_held", Some("clamd_unavailable")).await;
    let held_target = Target::scrape(&held_worker, "held").await;

    let groups = rule_groups(&all_switches_on(&["monitoring.prometheusRule.alerts.noWorkers.enabled=true"]));
    let fors = alerts(&groups);

    // Every worker metric the rules and the dashboard name is in the real scrapes.
    let scraped: BTreeSet<String> = [&healthy_target, &webhook_target, &held_target]
        .iter()
        .flat_map(|target| target.samples.iter().map(|sample| sample.name.clone()))
        .collect();
    let mut used = metric_names(&groups.to_string());
    for (_, expr) in dashboard_queries() {
        used.extend(metric_names(&expr));
    }
    for name in used.iter().filter(|name| name.starts_with("bucket_av_worker_")) {
        assert!(scraped.contains(name), "{name} is not exported by the worker; it exports {scraped:?}");
    }

    // Healthy: no alert fires, at any time of the run.
    let mut quiet = healthy_target.input_series();
    quiet.extend(operator_series(false));
    let checks = [STEP_MINUTE + 1, STEP_MINUTE + 6, STEP_MINUTE + 25, SERIES_MINUTES - 1]
        .iter()
        .map(|minute| {
            json!({
                "expr": "absent(ALERTS{alertstate=\"firing\"})",
                "eval_time": format!("{minute}m"),
                "exp_samples": [{ "labels": "{alertstate=\"firing\"}", "value": 1 }],
            })
        })
        .collect();
    promtool_test("monitoring-healthy", &groups, quiet, checks);

    // Faulty: each alert fires once its `for` has passed, for the policy that is at fault.
    let mut faulty = healthy_target.input_series();
    // The webhook worker's database, as it was scraped, three days later: freshclam stopped.
    faulty.extend(aged(webhook_target.input_series(), 3 * 86_400));
    faulty.extend(held_target.input_series());
    faulty.extend(operator_series(true));
    let mut crashed = healthy_target.target_labels();
    crashed.insert("pod".into(), "crashed-worker-0".into());
    crashed.insert("instance".into(), "crashed-worker-0:8080".into());
    faulty.push(series_entry("up", &crashed, &format!("0x{SERIES_MINUTES}")));
    let expected: [(&str, Option<&str>); 7] = [
        ("BucketAVMessagesDeadLettered", Some("webhook")),
        ("BucketAVWebhookFailures", Some("webhook")),
        ("BucketAVMessagesHeld", Some("held")),
        ("BucketAVWorkerDown", Some("healthy")),
        ("BucketAVSignatureDatabaseOld", Some("webhook")),
        ("BucketAVReconcileFailures", None),
        ("BucketAVMissedEvents", None),
    ];
    let mut checks = Vec::new();
    for (alert, policy) in expected {
        let minute = STEP_MINUTE + fors[alert] + 1;
        checks.push(answers_one(&firing(alert), minute));
        if let Some(policy) = policy {
            // Only the policy at fault: one alert's labels name it.
            checks.push(json!({
                "expr": format!("clamp_max(count by (policy) (ALERTS{{alertname=\"{alert}\", alertstate=\"firing\"}}), 1)"),
                "eval_time": format!("{minute}m"),
                "exp_samples": [{ "labels": format!("{{policy=\"{policy}\"}}"), "value": 1 }],
            }));
        }
    }
    // The ones not driven here stay quiet: MinIO accepts every key, and workers answer.
    let late = SERIES_MINUTES - 1;
    for alert in ["BucketAVS3KeyRefused", "BucketAVNoWorkers"] {
        checks.push(json!({
            "expr": format!("absent(ALERTS{{alertname=\"{alert}\"}})"),
            "eval_time": format!("{late}m"),
            "exp_samples": [{ "labels": format!("{{alertname=\"{alert}\"}}"), "value": 1 }],
        }));
    }
    // Every dashboard query returns data over the scrapes, just after the counters moved.
    for (_, expr) in dashboard_queries() {
        checks.push(answers_one(&format!("clamp_max(count({expr}), 1)"), STEP_MINUTE + 2));
    }
    promtool_test("monitoring-faulty", &groups, faulty, checks);

    // Without any worker answering, BucketAVNoWorkers fires.
    let mut gone = BTreeMap::from([("job".to_owned(), WORKER_JOB.to_owned())]);
    gone.insert("namespace".into(), WORKER_NAMESPACE.into());
    let mut nothing = vec![series_entry("up", &gone, &format!("0x{SERIES_MINUTES}"))];
    nothing.extend(operator_series(false));
    let minute = fors["BucketAVNoWorkers"] + 1;
    promtool_test("monitoring-no-workers", &groups, nothing, vec![answers_one(&firing("BucketAVNoWorkers"), minute)]);

    for worker in [healthy, webhook_worker, held_worker] {
        worker.terminate(Duration::from_secs(30)).await;
    }
    drop(clamd);
}

/// Waits until the worker reports the age of the private clamd's database 100 (an age of 0 s
/// is a value too: the database may have been built in the same second).
async fn wait_for_database_age(worker: &WorkerProcess) {
    wait_for("the worker to report its database's age", VERDICT_TIMEOUT, Duration::from_millis(200), async || {
        let samples = parse_exposition(&worker.metrics().await);
        let reported = samples.iter().any(|sample| {
            sample.name == DATABASE_AGE && sample.labels.get("database").map(String::as_str) == Some("100")
        });
        if reported { Ok(()) } else { Err(format!("no {DATABASE_AGE}{{database=\"100\"}}")) }
    })
    .await;
}

/// The alert on the signature mirror's databases.
const MIRROR_ALERT: &str = "BucketAVSignatureMirrorStale";
/// The mirror's database age gauge.
const MIRROR_AGE: &str = "bucket_av_signature_mirror_database_age_seconds";

/// The mirror binary (`bucket-av-operator signature-mirror`) serving `directory`, as the
/// chart runs it, scraped as the chart's PodMonitor scrapes it.
async fn scrape_mirror(directory: &Path) -> Vec<Value> {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut command = tokio::process::Command::new(workspace_binary("bucket-av-operator"));
    command.arg("signature-mirror").arg("--directory").arg(directory).args([
        "--database",
        "daily,bavs-test.hdb",
        "--listen",
        &listen,
    ]);
    let mirror = ServiceProcess::spawn_live("signature mirror", command, listen, Duration::from_secs(20)).await;
    let samples = parse_exposition(&mirror.metrics().await);
    drop(mirror);
    let target = BTreeMap::from([
        ("job".to_owned(), "signature-mirror".to_owned()),
        ("namespace".to_owned(), OPERATOR_NAMESPACE.to_owned()),
        ("pod".to_owned(), "bucket-av-scanner-signatures-0".to_owned()),
    ]);
    let mut series = vec![series_entry("up", &target, &format!("1x{SERIES_MINUTES}"))];
    for sample in samples.iter().filter(|sample| !sample.cumulative) {
        let mut labels = target.clone();
        labels.extend(sample.labels.clone());
        series.push(series_entry(&sample.name, &labels, &format!("{}x{SERIES_MINUTES}", sample.value)));
    }
    series
}

/// The alert on the mirror, over what a real mirror exports: quiet while its databases are
/// fresh; firing for the database that is too old, or missing.
#[tokio::test]
async fn the_mirror_alert_works_on_what_a_real_mirror_exports() {
    let groups = rule_groups(&all_switches_on(&[]));
    let wait = alerts(&groups)[MIRROR_ALERT] + 1;
    let max_age_hours = 24;
    let directory = scratch_dir("monitoring-mirror");
    let build = directory.join("build");
    std::fs::rename(
        bucket_av_testing::private_clamd::build_unsigned_database(&build, "daily", 300, &[]),
        directory.join("daily.cvd"),
    )
    .unwrap();
    std::fs::remove_dir_all(&build).unwrap();
    std::fs::copy(repo_path("testing/signatures/bavs-test.hdb"), directory.join("bavs-test.hdb")).unwrap();

    let fresh = scrape_mirror(&directory).await;
    let names: BTreeSet<String> =
        fresh.iter().filter_map(|entry| Some(entry["series"].as_str()?.split('{').next()?.to_owned())).collect();
    for name in metric_names(&groups.to_string()).iter().filter(|name| name.starts_with("bucket_av_signature_mirror_"))
    {
        assert!(names.contains(name), "{name} is not exported by the mirror; it exports {names:?}");
    }
    let quiet = json!({
        "expr": format!("absent(ALERTS{{alertname=\"{MIRROR_ALERT}\"}})"),
        "eval_time": format!("{}m", SERIES_MINUTES - 1),
        "exp_samples": [{ "labels": format!("{{alertname=\"{MIRROR_ALERT}\"}}"), "value": 1 }],
    });
    promtool_test("monitoring-mirror-fresh", &groups, fresh.clone(), vec![quiet.clone()]);

    // The same scrape two days on: freshclam stopped updating daily.
    let aged_database = |database: &str| {
        let mut series = fresh.clone();
        for entry in &mut series {
            let name = entry["series"].as_str().unwrap().to_owned();
            if name.starts_with(&format!("{MIRROR_AGE}{{")) && name.contains(&format!("database=\"{database}\"")) {
                entry["values"] = json!(format!("{}x{SERIES_MINUTES}", (max_age_hours + 24) * 3600));
            }
        }
        series
    };
    let fired = |database: &str| {
        json!({
            "expr": format!("clamp_max(count by (database) (ALERTS{{alertname=\"{MIRROR_ALERT}\", alertstate=\"firing\"}}), 1)"),
            "eval_time": format!("{wait}m"),
            "exp_samples": [{ "labels": format!("{{database=\"{database}\"}}"), "value": 1 }],
        })
    };
    promtool_test("monitoring-mirror-stale", &groups, aged_database("daily"), vec![fired("daily")]);
    // A custom file unchanged for two days is not stale: it is as old as its last change (as
    // main.cvd is, rebuilt every few months).
    promtool_test("monitoring-mirror-old-custom", &groups, aged_database("bavs-test.hdb"), vec![quiet]);

    // A database the mirror should carry is not there.
    std::fs::remove_file(directory.join("bavs-test.hdb")).unwrap();
    let missing = scrape_mirror(&directory).await;
    promtool_test("monitoring-mirror-missing", &groups, missing, vec![fired("bavs-test.hdb")]);
    std::fs::remove_dir_all(&directory).ok();
}

/// The worker's signature database age gauge.
const DATABASE_AGE: &str = "bucket_av_worker_signature_database_age_seconds";

/// `series` with the database age (a real scrape's series, labels kept) raised to `seconds`.
fn aged(mut series: Vec<Value>, seconds: u64) -> Vec<Value> {
    let mut found = false;
    for entry in &mut series {
        if entry["series"].as_str().is_some_and(|name| name.starts_with(&format!("{DATABASE_AGE}{{"))) {
            entry["values"] = json!(format!("{seconds}x{SERIES_MINUTES}"));
            found = true;
        }
    }
    assert!(found, "the scrape has no {DATABASE_AGE}");
    series
}
