//! A small in-memory Kubernetes API server behind a `tower-test` mock service, for reconcile
//! and leader election tests. It keeps objects by URL path and answers GET, POST, PUT, DELETE
//! and PATCH (server-side apply, merge patch, the status subresource) the way the real one does
//! for the requests the operator makes: every write sets a new `resourceVersion`, a PUT with a
//! stale one is a 409 Conflict, a POST of an existing name a 409 AlreadyExists. It records every
//! request in the shared [`Timeline`] so tests can assert on them.
//!
//! It is deliberately not a scripted expectation list: reconcile makes a dozen requests and
//! their exact order is not the contract. Tests ask about what matters instead ("the
//! TaskManagers were applied with 4 replicas by field manager weir-operator").

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use http::{Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use kube::client::Body;
use serde_json::{Value, json};

/// One call to any fake (Kubernetes API or JobManager), in arrival order, so tests can check
/// what happened before what (status written before stop-with-savepoint).
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Kube(ApiRequest),
    /// `POST /v1/jobs/<id>/stop s3://...` and friends.
    JobManager(String),
}

pub type Timeline = Arc<Mutex<Vec<Call>>>;

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another test thread panicked; the data is still usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl ApiRequest {
    pub fn is_apply(&self) -> bool {
        self.method == "PATCH" && self.content_type.starts_with("application/apply-patch")
    }

    pub fn field_manager(&self) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|pair| pair.strip_prefix("fieldManager="))
    }

    pub fn is_status(&self) -> bool {
        self.path.ends_with("/status")
    }

    /// `deployments/clicks-taskmanager`: the last two path segments (without `/status`).
    pub fn target(&self) -> String {
        let path = self.path.trim_end_matches("/status");
        let mut segments = path.rsplit('/');
        let name = segments.next().unwrap_or_default();
        let plural = segments.next().unwrap_or_default();
        format!("{plural}/{name}")
    }
}

#[derive(Debug, Default)]
struct ApiState {
    objects: BTreeMap<String, Value>,
    /// Answer a status write with a 500 after this many more succeed.
    fail_status_write_after: Option<usize>,
    /// The last `resourceVersion` handed out.
    resource_version: u64,
    /// A foreground DELETE only marks the object (`deletionTimestamp`, finalizer
    /// `foregroundDeletion`) until [`FakeApiServer::finish_foreground_deletions`], as the real
    /// API server keeps it until the garbage collector removed its dependents (a Deployment's
    /// pods). Off: every DELETE removes at once.
    hold_foreground_deletions: bool,
}

impl ApiState {
    /// Stamps `object` with a new `resourceVersion`, as every write does.
    fn stamp(&mut self, object: &mut Value) {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
    }
}

#[derive(Debug, Clone)]
pub struct FakeApiServer {
    state: Arc<Mutex<ApiState>>,
    timeline: Timeline,
}

impl FakeApiServer {
    /// Starts serving and returns the fake with a client bound to it.
    pub fn start(timeline: Timeline) -> (FakeApiServer, kube::Client) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeApiServer {
            state: Arc::default(),
            timeline,
        };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let request = ApiRequest {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    body,
                };
                let (status, body) = server.handle(request);
                let response = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body.to_string().into_bytes()))
                    .expect("valid response");
                respond.send_response(response);
            }
        });
        let client = kube::Client::new(service, "default");
        (fake, client)
    }

    fn handle(&self, request: ApiRequest) -> (StatusCode, Value) {
        let mut state = lock(&self.state);
        lock(&self.timeline).push(Call::Kube(request.clone()));
        let key = request.path.trim_end_matches("/status").to_string();
        match request.method.as_str() {
            "GET" => match state.objects.get(&key) {
                Some(object) => (StatusCode::OK, object.clone()),
                None => not_found(&key),
            },
            "POST" => {
                let mut object = request.body.clone();
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("generated")
                    .to_string();
                let path = format!("{key}/{name}");
                if state.objects.contains_key(&path) {
                    return conflict("AlreadyExists", &path);
                }
                object["metadata"]["uid"] = json!(format!("uid-{name}"));
                state.stamp(&mut object);
                state.objects.insert(path, object.clone());
                (StatusCode::CREATED, object)
            }
            "PUT" => {
                let Some(existing) = state.objects.get(&key) else {
                    return not_found(&key);
                };
                let expected = &request.body["metadata"]["resourceVersion"];
                if !expected.is_null() && *expected != existing["metadata"]["resourceVersion"] {
                    return conflict("Conflict", &key);
                }
                let mut object = request.body.clone();
                object["metadata"]["uid"] = existing["metadata"]["uid"].clone();
                state.stamp(&mut object);
                state.objects.insert(key, object.clone());
                (StatusCode::OK, object)
            }
            "DELETE"
                if state.hold_foreground_deletions
                    && request.body["propagationPolicy"] == "Foreground"
                    && state.objects.contains_key(&key) =>
            {
                let mut object = state.objects[&key].clone();
                if !object["metadata"]["deletionTimestamp"].is_string() {
                    object["metadata"]["deletionTimestamp"] = json!("2023-11-14T22:13:20Z");
                    object["metadata"]["finalizers"] = json!([FOREGROUND_DELETION]);
                    state.stamp(&mut object);
                    state.objects.insert(key, object.clone());
                }
                (StatusCode::OK, object)
            }
            "DELETE" => match state.objects.remove(&key) {
                Some(_) => (
                    StatusCode::OK,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
                ),
                None => not_found(&key),
            },
            "PATCH" if request.is_status() => {
                let fail = match state.fail_status_write_after {
                    Some(0) => {
                        state.fail_status_write_after = None;
                        true
                    }
                    Some(n) => {
                        state.fail_status_write_after = Some(n - 1);
                        false
                    }
                    None => false,
                };
                if fail {
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": "injected failure", "reason": "InternalError", "code": 500}),
                    );
                }
                let Some(mut object) = state.objects.get(&key).cloned() else {
                    return not_found(&key);
                };
                if request.is_apply() {
                    // One manager owns the whole status: what it leaves out is gone.
                    object["status"] = request.body["status"].clone();
                } else {
                    merge_patch(&mut object["status"], &request.body["status"]);
                }
                state.stamp(&mut object);
                state.objects.insert(key, object.clone());
                (StatusCode::OK, object)
            }
            "PATCH" => {
                let existing = state.objects.get(&key).cloned();
                let object = if request.is_apply() {
                    let mut object = request.body.clone();
                    let generation = match &existing {
                        Some(old) if old["spec"] == object["spec"] => {
                            old["metadata"]["generation"].as_i64().unwrap_or(1)
                        }
                        Some(old) => old["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
                        None => 1,
                    };
                    object["metadata"]["generation"] = json!(generation);
                    if let Some(old) = &existing {
                        object["status"] = old["status"].clone();
                    }
                    object
                } else {
                    let Some(mut object) = existing else {
                        return not_found(&key);
                    };
                    merge_patch(&mut object, &request.body);
                    object
                };
                let mut object = object;
                state.stamp(&mut object);
                let finalized = object["metadata"]["deletionTimestamp"].is_string()
                    && object["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(Vec::is_empty);
                if finalized {
                    state.objects.remove(&key);
                } else {
                    state.objects.insert(key, object.clone());
                }
                (StatusCode::OK, object)
            }
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 405}),
            ),
        }
    }

    /// Stores an object at its canonical path, as `kubectl apply` would.
    pub fn put(&self, path: &str, object: Value) {
        lock(&self.state).objects.insert(path.to_string(), object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        lock(&self.state).objects.get(path).cloned()
    }

    /// Changes a stored object in place (a user edit, the Deployment controller, deletion).
    pub fn edit(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut state = lock(&self.state);
        if let Some(object) = state.objects.get_mut(path) {
            change(object);
        }
    }

    pub fn remove(&self, path: &str) {
        lock(&self.state).objects.remove(path);
    }

    /// From now on a foreground DELETE leaves the object in place, marked for deletion, until
    /// [`Self::finish_foreground_deletions`].
    pub fn hold_foreground_deletions(&self) {
        lock(&self.state).hold_foreground_deletions = true;
    }

    /// The garbage collector is done: the dependents (pods) of every object deleted in the
    /// foreground are gone, and so are those objects.
    pub fn finish_foreground_deletions(&self) {
        lock(&self.state).objects.retain(|_, object| {
            !object["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == FOREGROUND_DELETION))
        });
    }

    /// Lets `succeeding` status writes through, then fails one with a 500.
    pub fn fail_status_write_after(&self, succeeding: usize) {
        lock(&self.state).fail_status_write_after = Some(succeeding);
    }

    /// What the Deployment controller does once pods are up: every stored Deployment reports
    /// its current generation rolled out with all replicas available.
    pub fn roll_out_deployments(&self) {
        let mut state = lock(&self.state);
        for (path, object) in state.objects.iter_mut() {
            if !path.contains("/deployments/") {
                continue;
            }
            let Ok(deployment) = serde_json::from_value::<Deployment>(object.clone()) else {
                continue;
            };
            let replicas = deployment.spec.replicas.unwrap_or(1);
            object["status"] = json!({
                "observedGeneration": deployment.metadata.generation,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "availableReplicas": replicas,
                "readyReplicas": replicas,
            });
        }
    }
}

/// The finalizer the API server puts on an object deleted with foreground propagation.
const FOREGROUND_DELETION: &str = "foregroundDeletion";

fn conflict(reason: &str, path: &str) -> (StatusCode, Value) {
    (
        StatusCode::CONFLICT,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{path}: {reason}"), "reason": reason, "code": 409}),
    )
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
    )
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}
