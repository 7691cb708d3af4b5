//! The Helm chart's own files, without helm or a cluster: the CRD it ships is the generated one
//! and its appVersion is the workspace's. What helm and the API server make of the chart is
//! tests/helm_chart.rs.

use bucket_av_testing::chart::repo_path;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_path(path)).unwrap_or_else(|error| panic!("read {path}: {error}"))
}

#[test]
fn the_chart_ships_the_generated_crd_unchanged() {
    assert!(
        read("crds/bucketscanpolicy.yaml") == read("charts/bucket-av-scanner/crds/bucketscanpolicy.yaml"),
        "charts/bucket-av-scanner/crds/bucketscanpolicy.yaml differs from crds/bucketscanpolicy.yaml; \
         write both with `just generate`"
    );
    let files: Vec<_> = std::fs::read_dir(repo_path("charts/bucket-av-scanner/crds"))
        .expect("the chart has crds/")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["bucketscanpolicy.yaml"], "the chart's crds/ holds exactly the generated CRD");
}

#[test]
fn the_chart_app_version_is_the_workspace_version() {
    let chart = read("charts/bucket-av-scanner/Chart.yaml");
    let app_version = chart
        .lines()
        .find_map(|line| line.strip_prefix("appVersion:"))
        .map(|value| value.trim().trim_matches('"'))
        .expect("Chart.yaml has appVersion");
    assert_eq!(app_version, env!("CARGO_PKG_VERSION"), "set appVersion in Chart.yaml to the workspace version");
}
