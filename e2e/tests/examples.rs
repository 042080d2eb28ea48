//! The StreamJob manifests users and the kind scenarios apply, checked against the generated
//! CRD's schema without a cluster (CEL rules stay with the API server).

use serde_json::Value;
use weir_e2e::cluster::{E2eConfig, SequenceJob};
use weir_e2e::repo_root;
use weir_e2e::schema::{crd_schema, violations};

fn crd() -> Value {
    let text = std::fs::read_to_string(repo_root().join("crds/streamjob.yaml"))
        .expect("crds/streamjob.yaml");
    serde_yaml_ng::from_str(&text).expect("the CRD parses")
}

fn example(name: &str) -> Value {
    let path = repo_root().join("examples/k8s").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).expect("the example parses")
}

fn assert_valid(what: &str, manifest: &Value) {
    let crd = crd();
    let schema = crd_schema(&crd).expect("the CRD has a schema");
    let problems = violations(manifest, schema);
    assert!(
        problems.is_empty(),
        "{what} breaks the StreamJob schema: {problems:?}"
    );
    assert_eq!(manifest["apiVersion"], "weir.dev/v1alpha1", "{what}");
    assert_eq!(manifest["kind"], "StreamJob", "{what}");
}

#[test]
fn url_count_example_matches_the_crd() {
    let manifest = example("url-count.yaml");
    assert_valid("examples/k8s/url-count.yaml", &manifest);
    assert_eq!(manifest["spec"]["job"]["name"], "url-count");
}

#[test]
fn state_machine_example_matches_the_crd() {
    let manifest = example("state-machine.yaml");
    assert_valid("examples/k8s/state-machine.yaml", &manifest);
    assert_eq!(manifest["spec"]["job"]["name"], "state-machine");
}

#[test]
fn kafka_minute_bars_example_matches_the_crd_and_takes_its_secret_from_the_environment() {
    let manifest = example("kafka-minute-bars.yaml");
    assert_valid("examples/k8s/kafka-minute-bars.yaml", &manifest);
    let spec = &manifest["spec"];
    assert_eq!(spec["job"]["name"], "minute-bars");
    let variable = spec["job"]["kafka"]["propertiesFromEnv"]["sasl.password"].clone();
    assert_eq!(variable, "KAFKA_PASSWORD");
    for (role, container) in [("jobManager", "jobmanager"), ("taskManager", "taskmanager")] {
        let containers = &spec[role]["podTemplate"]["spec"]["containers"];
        assert_eq!(
            containers[0]["name"], container,
            "{role}: merged into the worker container"
        );
        assert_eq!(
            containers[0]["env"][0]["name"], variable,
            "{role} gets the secret"
        );
    }
}

#[test]
fn examples_use_the_in_cluster_s3_and_the_job_service_account() {
    for name in ["url-count.yaml", "state-machine.yaml"] {
        let spec = example(name)["spec"].clone();
        assert_eq!(spec["job"]["s3"]["endpoint"], "http://minio:9000", "{name}");
        assert_eq!(spec["job"]["s3"]["forcePathStyle"], true, "{name}");
        assert_eq!(spec["s3CredentialsSecret"]["name"], "weir-s3", "{name}");
        assert_eq!(spec["serviceAccountName"], "weir-job", "{name}");
        for field in [
            &spec["job"]["args"]["input"],
            &spec["job"]["args"]["output"],
            &spec["job"]["checkpointing"]["storage"],
        ] {
            assert!(
                field
                    .as_str()
                    .is_some_and(|uri| uri.starts_with("s3://weir/")),
                "{name}: {field}"
            );
        }
    }
}

#[test]
fn the_kind_scenarios_sequence_check_job_matches_the_crd() {
    let job = SequenceJob::named("schema", &E2eConfig::from_env()).with_parallelism(3);
    assert_valid("the kind scenarios' sequence-check job", &job.manifest());
}

#[test]
fn schema_level_rejections_of_the_invalid_manifest_scenario_are_in_the_crd() {
    let crd = crd();
    let schema = crd_schema(&crd).expect("schema");
    let job = SequenceJob::named("invalid", &E2eConfig::from_env());
    let mut zero = job.manifest();
    zero["spec"]["parallelism"] = 0.into();
    assert!(
        !violations(&zero, schema).is_empty(),
        "parallelism 0 must break the schema"
    );
    let mut mode = job.manifest();
    mode["spec"]["upgradeMode"] = "yolo".into();
    assert!(
        !violations(&mode, schema).is_empty(),
        "an unknown upgradeMode must break the schema"
    );
}
