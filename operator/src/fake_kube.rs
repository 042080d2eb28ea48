//! A small in-memory Kubernetes API server behind a `tower-test` mock service, for reconcile
//! and leader election tests. It keeps objects by URL path and answers GET, POST, PUT, DELETE
//! and PATCH (server-side apply, merge patch, JSON patch, the status subresource) the way the
//! real one does for the requests the operator makes: every write sets a new
//! `resourceVersion`, a PUT with a stale one is a 409 Conflict, a POST of an existing name a
//! 409 AlreadyExists, a JSON patch whose `test` fails a 422 that changes nothing. It records
//! every request in the shared [`Timeline`] so tests can assert on them.
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

    /// An RFC 6902 JSON Patch: a list of operations.
    pub fn is_json_patch(&self) -> bool {
        self.method == "PATCH" && self.content_type.starts_with("application/json-patch+json")
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
                } else if request.is_json_patch() {
                    // Through the status subresource only the status changes.
                    let mut patched = object.clone();
                    if let Err(message) = json_patch(&mut patched, &request.body) {
                        return unprocessable(&key, &message);
                    }
                    object["status"] = patched["status"].take();
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
                    if request.is_json_patch() {
                        if let Err(message) = json_patch(&mut object, &request.body) {
                            return unprocessable(&key, &message);
                        }
                    } else {
                        merge_patch(&mut object, &request.body);
                    }
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

/// What the API server answers a JSON patch it cannot apply (a failed `test` among them).
fn unprocessable(path: &str, message: &str) -> (StatusCode, Value) {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{path}: {message}"), "reason": "Invalid", "code": 422}),
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

/// RFC 6902 JSON Patch with the operations the operator sends (`test`, `add`, `remove`,
/// `replace`), all or nothing. As on the API server, a `test` for `null` passes on a member
/// that is absent: that is how a list the server does not store (empty) is tested.
fn json_patch(target: &mut Value, operations: &Value) -> Result<(), String> {
    let operations = operations
        .as_array()
        .ok_or("a JSON patch is a list of operations")?;
    let mut patched = target.clone();
    for operation in operations {
        let path = operation["path"]
            .as_str()
            .ok_or("an operation needs a path")?;
        let value = &operation["value"];
        match operation["op"].as_str().unwrap_or_default() {
            "test" => {
                if patched.pointer(path).unwrap_or(&Value::Null) != value {
                    return Err(format!("test operation failed at {path}"));
                }
            }
            "add" => add_at(&mut patched, path, value.clone())?,
            "remove" => remove_at(&mut patched, path)?,
            "replace" => {
                remove_at(&mut patched, path)?;
                add_at(&mut patched, path, value.clone())?;
            }
            other => return Err(format!("unsupported operation {other:?}")),
        }
    }
    *target = patched;
    Ok(())
}

/// The parent of a JSON pointer and its last token, unescaped.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("{path:?} is not a JSON pointer"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

/// An array index for `token` in a list of `len` (`-`: the end, where `add` appends).
fn array_index(token: &str, len: usize, path: &str) -> Result<usize, String> {
    match token {
        "-" => Ok(len),
        _ => token
            .parse()
            .ok()
            .filter(|index| *index <= len)
            .ok_or_else(|| format!("{path}: no such index")),
    }
}

fn add_at(document: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let (parent, last) = split_pointer(path)?;
    match document.pointer_mut(parent) {
        Some(Value::Object(members)) => {
            members.insert(last, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = array_index(&last, items.len(), path)?;
            items.insert(index, value);
            Ok(())
        }
        _ => Err(format!("{path}: no such parent")),
    }
}

fn remove_at(document: &mut Value, path: &str) -> Result<(), String> {
    let (parent, last) = split_pointer(path)?;
    let removed = match document.pointer_mut(parent) {
        Some(Value::Object(members)) => members.remove(&last),
        Some(Value::Array(items)) => match array_index(&last, items.len(), path)? {
            index if index < items.len() => Some(items.remove(index)),
            _ => None,
        },
        _ => None,
    };
    removed
        .map(|_| ())
        .ok_or_else(|| format!("{path}: nothing to remove"))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;
    use kube::api::{Patch, PatchParams};

    use super::*;

    fn patched(mut document: Value, operations: Value) -> Result<Value, String> {
        json_patch(&mut document, &operations)?;
        Ok(document)
    }

    #[test]
    fn a_null_test_passes_on_an_absent_member_and_add_creates_it() {
        let document = json!({"metadata": {"name": "a"}});
        let result = patched(
            document,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
            ]),
        );
        assert_eq!(
            result,
            Ok(json!({"metadata": {"name": "a", "finalizers": ["x"]}}))
        );
    }

    #[test]
    fn add_appends_or_inserts_and_remove_takes_out_one_entry() {
        let document = json!({"list": ["a", "c"]});
        let result = patched(
            document,
            json!([
                {"op": "add", "path": "/list/-", "value": "d"},
                {"op": "add", "path": "/list/1", "value": "b"},
                {"op": "remove", "path": "/list/0"},
                {"op": "replace", "path": "/list/2", "value": "e"},
            ]),
        );
        assert_eq!(result, Ok(json!({"list": ["b", "c", "e"]})));
    }

    #[test]
    fn escaped_tokens_name_members_with_slashes_and_tildes() {
        let document = json!({"annotations": {"weir.dev/a~b": "1"}});
        let result = patched(
            document,
            json!([
                {"op": "test", "path": "/annotations/weir.dev~1a~0b", "value": "1"},
                {"op": "remove", "path": "/annotations/weir.dev~1a~0b"},
            ]),
        );
        assert_eq!(result, Ok(json!({"annotations": {}})));
    }

    #[test]
    fn a_failed_operation_changes_nothing() {
        let document = json!({"list": ["a", "b"]});
        for failing in [
            json!({"op": "test", "path": "/list", "value": ["a"]}),
            json!({"op": "test", "path": "/list/5", "value": "a"}),
            json!({"op": "test", "path": "/missing", "value": "a"}),
            json!({"op": "remove", "path": "/list/2"}),
            json!({"op": "add", "path": "/list/3", "value": "c"}),
            json!({"op": "add", "path": "/no/parent", "value": "c"}),
            json!({"op": "move", "from": "/list/0", "path": "/list/1"}),
        ] {
            let mut target = document.clone();
            let operations = json!([{"op": "remove", "path": "/list/0"}, failing]);
            assert!(
                json_patch(&mut target, &operations).is_err(),
                "{operations}"
            );
            assert_eq!(target, document, "{operations}");
        }
    }

    #[tokio::test]
    async fn the_server_applies_a_json_patch_and_refuses_a_failed_test_with_422() {
        let (fake, client) = FakeApiServer::start(Timeline::default());
        let path = "/api/v1/namespaces/ns/configmaps/settings";
        fake.put(
            path,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "settings", "namespace": "ns", "finalizers": ["a"]}}),
        );
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        let patch = |operations: Value| {
            Patch::Json::<()>(serde_json::from_value(operations).expect("a JSON patch"))
        };

        let stale = patch(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": []},
            {"op": "add", "path": "/metadata/finalizers/-", "value": "b"},
        ]));
        match api.patch("settings", &PatchParams::default(), &stale).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 422),
            other => panic!("expected a 422, got {other:?}"),
        }
        assert_eq!(
            fake.get(path).expect("stored")["metadata"]["finalizers"],
            json!(["a"])
        );

        let current = patch(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": ["a"]},
            {"op": "add", "path": "/metadata/finalizers/-", "value": "b"},
        ]));
        let updated = api
            .patch("settings", &PatchParams::default(), &current)
            .await
            .expect("patched");
        assert_eq!(
            updated.metadata.finalizers,
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert!(
            updated.metadata.resource_version.is_some(),
            "a write stamps it"
        );
        let request = lock(&fake.timeline)
            .iter()
            .rev()
            .find_map(|call| match call {
                Call::Kube(request) => Some(request.clone()),
                Call::JobManager(_) => None,
            })
            .expect("a request");
        assert!(request.is_json_patch(), "{request:?}");
    }
}
