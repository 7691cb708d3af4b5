//! A fake Kubernetes API server behind `kube::Client`, as kube-rs/controller-rs tests its
//! reconciler: a `tower_test` mock service answered by a task that keeps objects by path,
//! applies patches the way the reconciler needs (server-side apply replaces, the status
//! subresource sets `status`, the finalizer's JSON patches edit `metadata.finalizers`), and
//! records every request so the tests can assert what the reconciler did.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// One request the reconciler sent.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: Method,
    /// The path without the query.
    pub(crate) path: String,
    pub(crate) content_type: String,
    pub(crate) body: Value,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
}

/// The fake API server; dropping the client ends its task.
#[derive(Clone, Default)]
pub(crate) struct ApiServer {
    state: Arc<Mutex<State>>,
}

impl ApiServer {
    /// Starts answering requests of the returned client.
    pub(crate) fn start(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let recorded = Recorded {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_owned(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_owned(),
                    body,
                };
                let (status, answer) = answer(&mut state.lock().unwrap(), &recorded);
                state.lock().unwrap().requests.push(recorded);
                let response = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    /// Stores `object` at `path` (as `GET path` returns it).
    pub(crate) fn put(&self, path: &str, object: Value) {
        self.state.lock().unwrap().objects.insert(path.to_owned(), object);
    }

    /// The object at `path`, if any.
    pub(crate) fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Every request so far, in order.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The requests with `method` whose path starts with `prefix`.
    pub(crate) fn requests_to(&self, method: Method, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|request| request.method == method && request.path.starts_with(prefix))
            .collect()
    }
}

fn not_found(path: &str) -> (StatusCode, Value) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{path} not found"), "reason": "NotFound", "code": 404,
    });
    (StatusCode::NOT_FOUND, status)
}

fn answer(state: &mut State, request: &Recorded) -> (StatusCode, Value) {
    let path = request.path.as_str();
    match request.method {
        Method::GET => match state.objects.get(path) {
            Some(object) => (StatusCode::OK, object.clone()),
            None => not_found(path),
        },
        Method::DELETE => match state.objects.remove(path) {
            Some(object) => (StatusCode::OK, object),
            None => not_found(path),
        },
        // Events (the recorder's only POST).
        Method::POST => (StatusCode::CREATED, request.body.clone()),
        Method::PATCH => patch(state, request),
        _ => (StatusCode::METHOD_NOT_ALLOWED, json!({"kind": "Status", "code": 405})),
    }
}

fn patch(state: &mut State, request: &Recorded) -> (StatusCode, Value) {
    let path = request.path.as_str();
    if let Some(object_path) = path.strip_suffix("/status") {
        let Some(object) = state.objects.get_mut(object_path) else { return not_found(path) };
        object["status"] = request.body["status"].clone();
        return (StatusCode::OK, object.clone());
    }
    if request.content_type.starts_with("application/json-patch") {
        let Some(object) = state.objects.get_mut(path) else { return not_found(path) };
        for operation in request.body.as_array().into_iter().flatten() {
            apply_json_patch_operation(object, operation);
        }
        return (StatusCode::OK, object.clone());
    }
    // Server-side apply (and the recorder's merge patches of events): the body becomes the
    // object, keeping the status the API server holds for it.
    let mut object = request.body.clone();
    if let Some(status) = state.objects.get(path).and_then(|existing| existing.get("status")) {
        object["status"] = status.clone();
    }
    object["metadata"]["uid"] = json!(format!("uid-{path}"));
    state.objects.insert(path.to_owned(), object.clone());
    (StatusCode::OK, object)
}

/// The JSON patch operations kube's finalizer helper sends: `test`, `add` and `remove` on
/// `/metadata/finalizers[/-|/<index>]`.
fn apply_json_patch_operation(object: &mut Value, operation: &Value) {
    let path = operation["path"].as_str().unwrap_or_default();
    let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
    match operation["op"].as_str() {
        Some("add") if last == "-" => {
            let list = object.pointer_mut(parent).expect("a list to add to");
            list.as_array_mut().expect("a list").push(operation["value"].clone());
        }
        Some("add") => {
            let target = object.pointer_mut(parent).expect("a parent to add to");
            target[last] = operation["value"].clone();
        }
        Some("remove") => {
            let list = object.pointer_mut(parent).expect("a list to remove from");
            let index: usize = last.parse().expect("an index");
            list.as_array_mut().expect("a list").remove(index);
        }
        _ => {}
    }
}
