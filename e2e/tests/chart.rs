//! Manifest tests: render charts/weir with helm and assert on the objects. No cluster needed;
//! helm must be installed (scripts/install-helm.sh), otherwise every test fails saying so.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role};
use serde_json::Value;
use weir_e2e::helm::{self, RELEASE_NAMESPACE};
use weir_e2e::manifests::{Manifests, name_of, namespace_of};
use weir_e2e::repo_root;

const OPERATOR: &str = "weir-operator";
const TEAMS: (&str, &str) = ("operator.watchNamespaces", "{team-a,team-b}");

fn render(values: &[(&str, &str)]) -> Manifests {
    match helm::render(values) {
        Ok(manifests) => manifests,
        Err(e) => panic!("{e}"),
    }
}

/// The value combinations CI renders (scripts/test-chart.sh renders the same ones).
fn every_combination() -> Vec<(&'static str, Manifests)> {
    vec![
        ("default", render(&[])),
        ("namespaced", render(&[TEAMS])),
        (
            "monitoring",
            render(&[
                TEAMS,
                ("serviceMonitor.enabled", "true"),
                ("networkPolicy.enabled", "true"),
            ]),
        ),
        ("ha", render(&[("operator.replicas", "3")])),
        (
            "single",
            render(&[("operator.leaderElection.enabled", "false")]),
        ),
    ]
}

/// The rules the operator needs in a namespace it watches: one line per (group, resource) as
/// "group/resource: verbs". Kept in step with operator/src/controller by hand, on purpose:
/// a new verb must be a reviewed change here and in the chart.
fn expected_watch_rules() -> BTreeSet<String> {
    [
        "weir.dev/streamjobs: list,patch,watch",
        "weir.dev/streamjobs/status: patch",
        "weir.dev/streamjobs/finalizers: update",
        "apps/deployments: create,delete,get,list,patch,watch",
        "/configmaps: create,list,patch,watch",
        "/services: create,patch",
        "/secrets: create,patch",
        "networking.k8s.io/networkpolicies: create,patch",
        "events.k8s.io/events: create,patch",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn rules_of(object: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(object["rules"].clone()).expect("rules decode as PolicyRule")
}

/// One line per (group, resource, resourceNames) with its sorted verbs.
fn summarize(rules: &[PolicyRule]) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for rule in rules {
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        let names = rule
            .resource_names
            .as_ref()
            .map(|n| format!(" [{}]", n.join(",")))
            .unwrap_or_default();
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                lines.insert(format!("{group}/{resource}{names}: {}", verbs.join(",")));
            }
        }
    }
    lines
}

fn operator_deployment(manifests: &Manifests) -> Deployment {
    let deployment = manifests
        .get_in("Deployment", RELEASE_NAMESPACE, OPERATOR)
        .expect("the operator Deployment is rendered");
    serde_json::from_value(deployment.clone()).expect("a valid Deployment")
}

fn pod_spec(deployment: &Deployment) -> PodSpec {
    deployment.spec.template.spec.clone().expect("a pod spec")
}

fn operator_args(manifests: &Manifests) -> Vec<String> {
    pod_spec(&operator_deployment(manifests)).containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

fn parse_yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("valid YAML")
}

#[test]
fn the_operator_reads_its_rest_token_key_from_the_chart_secret_and_peer_tls_is_on() {
    let manifests = render(&[]);
    let key_secret = format!("{OPERATOR}-rest-token-key");
    let secret = manifests
        .get_in("Secret", RELEASE_NAMESPACE, &key_secret)
        .expect("the key Secret is rendered");
    let key = secret["data"]["key"].as_str().expect("a key");
    assert!(key.len() >= 64, "at least 32 bytes, base64: {key}");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let deployment = operator_deployment(&manifests);
    let pod = pod_spec(&deployment);
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(&key_secret))
        .expect("the key Secret is a volume");
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .expect("mounted");
    let file = format!("{}/key", mount.mount_path);
    assert!(
        operator_args(&manifests).contains(&format!("--rest-token-key-file={file}")),
        "{:?}",
        operator_args(&manifests)
    );

    assert!(
        !operator_args(&manifests).contains(&"--no-peer-tls".to_string()),
        "peer TLS is on by default"
    );
    let plain = render(&[("operator.peerTls.enabled", "false")]);
    assert!(operator_args(&plain).contains(&"--no-peer-tls".to_string()));

    let off = render(&[("operator.restAuth.enabled", "false")]);
    assert!(
        off.get_in("Secret", RELEASE_NAMESPACE, &key_secret)
            .is_none()
    );
    assert!(
        !operator_args(&off)
            .iter()
            .any(|a| a.starts_with("--rest-token-key-file"))
    );
}

#[test]
fn chart_installs_the_generated_crd_unchanged() {
    let manifests = render(&[]);
    let crd = manifests
        .get("CustomResourceDefinition", "streamjobs.weir.dev")
        .expect("the StreamJob CRD is rendered");
    let generated = std::fs::read_to_string(repo_root().join("crds/streamjob.yaml"))
        .expect("crds/streamjob.yaml exists");
    let generated = parse_yaml(&generated);
    assert_eq!(
        crd["spec"], generated["spec"],
        "the chart's CRD schema drifted from crds/"
    );
    assert_eq!(crd["apiVersion"], generated["apiVersion"]);
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "uninstalling the chart must not delete every StreamJob"
    );
    assert_eq!(manifests.count("CustomResourceDefinition"), 1);
}

#[test]
fn chart_crd_is_a_link_to_the_generated_file_not_a_copy() {
    let link = repo_root().join("charts/weir/files/streamjob.yaml");
    let target = std::fs::read_link(&link).expect("charts/weir/files/streamjob.yaml is a symlink");
    assert_eq!(target, std::path::Path::new("../../../crds/streamjob.yaml"));
    assert!(
        !repo_root().join("charts/weir/crds").exists(),
        "a crds/ folder in the chart would install a second, unmanaged copy"
    );
}

#[test]
fn crd_can_be_left_out() {
    let manifests = render(&[("crds.install", "false")]);
    assert_eq!(manifests.count("CustomResourceDefinition"), 0);
}

#[test]
fn watching_all_namespaces_grants_one_cluster_role_with_exactly_the_used_verbs() {
    let manifests = render(&[]);
    let roles: Vec<_> = manifests.of_kind("ClusterRole").collect();
    assert_eq!(roles.len(), 1, "one ClusterRole");
    assert_eq!(summarize(&rules_of(roles[0])), expected_watch_rules());
    let binding = manifests
        .get("ClusterRoleBinding", name_of(roles[0]))
        .expect("the ClusterRole is bound");
    assert_eq!(binding["subjects"][0]["name"], OPERATOR);
    assert_eq!(binding["subjects"][0]["namespace"], RELEASE_NAMESPACE);
}

#[test]
fn watching_listed_namespaces_grants_a_role_in_each_and_nothing_cluster_wide() {
    let manifests = render(&[TEAMS]);
    assert_eq!(manifests.count("ClusterRole"), 0);
    assert_eq!(manifests.count("ClusterRoleBinding"), 0);
    for namespace in ["team-a", "team-b"] {
        let role = manifests
            .get_in("Role", namespace, OPERATOR)
            .unwrap_or_else(|| panic!("a Role in {namespace}"));
        assert_eq!(summarize(&rules_of(role)), expected_watch_rules());
        let binding = manifests
            .get_in("RoleBinding", namespace, OPERATOR)
            .unwrap_or_else(|| panic!("a RoleBinding in {namespace}"));
        assert_eq!(binding["roleRef"]["kind"], "Role");
        assert_eq!(binding["subjects"][0]["namespace"], RELEASE_NAMESPACE);
    }
    assert!(
        operator_args(&manifests).contains(&"--namespace=team-a,team-b".to_string()),
        "{:?}",
        operator_args(&manifests)
    );
}

#[test]
fn leader_election_may_touch_only_its_lease() {
    let manifests = render(&[]);
    let role = manifests
        .get_in("Role", RELEASE_NAMESPACE, "weir-operator-leader-election")
        .expect("a leader election Role in the release namespace");
    let role: Role = serde_json::from_value(role.clone()).expect("a valid Role");
    let expected: BTreeSet<String> = [
        "coordination.k8s.io/leases: create",
        "coordination.k8s.io/leases [weir-operator-leader]: get,update",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(summarize(&role.rules.unwrap_or_default()), expected);
    let args = operator_args(&manifests);
    assert!(
        args.contains(&format!("--lease-namespace={RELEASE_NAMESPACE}")),
        "{args:?}"
    );
    assert!(!args.contains(&"--no-leader-election".to_string()));
}

#[test]
fn without_leader_election_there_is_no_lease_access_and_the_flag_is_passed() {
    let manifests = render(&[("operator.leaderElection.enabled", "false")]);
    assert!(
        manifests
            .get_in("Role", RELEASE_NAMESPACE, "weir-operator-leader-election")
            .is_none()
    );
    assert!(operator_args(&manifests).contains(&"--no-leader-election".to_string()));
}

#[test]
fn replicas_are_configurable() {
    let deployment = operator_deployment(&render(&[("operator.replicas", "3")]));
    assert_eq!(deployment.spec.replicas, Some(3));
}

#[test]
fn two_replicas_without_leader_election_do_not_render() {
    let error = helm::template(&[
        ("operator.replicas", "2"),
        ("operator.leaderElection.enabled", "false"),
    ])
    .expect_err("must fail");
    assert!(error.to_string().contains("leaderElection"), "{error}");
}

#[test]
fn rbac_has_no_wildcards_no_pods_and_never_reads_secrets() {
    for (combination, manifests) in every_combination() {
        for kind in ["ClusterRole", "Role"] {
            for role in manifests.of_kind(kind) {
                for rule in rules_of(role) {
                    let every = rule
                        .api_groups
                        .iter()
                        .flatten()
                        .chain(rule.resources.iter().flatten())
                        .chain(rule.verbs.iter());
                    for word in every {
                        assert!(
                            !word.contains('*'),
                            "{combination}: wildcard `{word}` in {kind} {}",
                            name_of(role)
                        );
                    }
                    for resource in rule.resources.iter().flatten() {
                        assert!(
                            !["pods", "pods/exec"].contains(&resource.as_str()),
                            "{combination}: {kind} {} grants {resource}",
                            name_of(role)
                        );
                        // The jobs' REST token Secrets are written, never read.
                        if resource == "secrets" {
                            assert!(
                                rule.verbs.iter().all(|v| v == "create" || v == "patch"),
                                "{combination}: {kind} {} may {:?} Secrets",
                                name_of(role),
                                rule.verbs
                            );
                        }
                    }
                    assert!(
                        rule.non_resource_urls.is_none(),
                        "{combination}: nonResourceURLs"
                    );
                }
            }
        }
    }
}

#[test]
fn operator_pods_run_restricted() {
    for (combination, manifests) in every_combination() {
        let pod = pod_spec(&operator_deployment(&manifests));
        let pod_security = pod.security_context.expect("pod securityContext");
        assert_eq!(pod_security.run_as_non_root, Some(true), "{combination}");
        assert_eq!(
            pod_security.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault"),
            "{combination}"
        );
        assert!(
            pod.host_network.is_none() && pod.host_pid.is_none(),
            "{combination}"
        );
        for container in &pod.containers {
            let security = container
                .security_context
                .clone()
                .expect("container securityContext");
            assert_eq!(security.run_as_non_root, Some(true), "{combination}");
            assert_eq!(
                security.read_only_root_filesystem,
                Some(true),
                "{combination}"
            );
            assert_eq!(
                security.allow_privilege_escalation,
                Some(false),
                "{combination}"
            );
            assert_eq!(security.privileged, None, "{combination}");
            assert_eq!(
                security.capabilities.and_then(|c| c.drop),
                Some(vec!["ALL".to_string()]),
                "{combination}"
            );
            assert_eq!(
                security.seccomp_profile.map(|s| s.type_).as_deref(),
                Some("RuntimeDefault"),
                "{combination}"
            );
        }
    }
}

#[test]
fn operator_identity_comes_from_the_downward_api() {
    let pod = pod_spec(&operator_deployment(&render(&[])));
    let env = pod.containers[0].env.clone().unwrap_or_default();
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env.iter().find(|e| e.name == name).expect(name);
        let path = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(path, Some(field));
    }
    assert_eq!(pod.service_account_name.as_deref(), Some(OPERATOR));
}

#[test]
fn job_pods_get_a_service_account_without_token_or_bindings() {
    for (values, namespaces) in [
        (vec![], vec![RELEASE_NAMESPACE]),
        (vec![TEAMS], vec!["team-a", "team-b"]),
    ] {
        let manifests = render(&values);
        let accounts: Vec<ServiceAccount> = manifests.typed("ServiceAccount").expect("decode");
        for namespace in &namespaces {
            let account = accounts
                .iter()
                .find(|a| {
                    a.metadata.name.as_deref() == Some("weir-job")
                        && a.metadata.namespace.as_deref() == Some(namespace)
                })
                .unwrap_or_else(|| panic!("weir-job ServiceAccount in {namespace}"));
            assert_eq!(account.automount_service_account_token, Some(false));
        }
        for kind in ["RoleBinding", "ClusterRoleBinding"] {
            for binding in manifests.of_kind(kind) {
                let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
                assert!(
                    subjects.iter().all(|s| s["name"] != "weir-job"),
                    "{kind} {} binds the job ServiceAccount",
                    name_of(binding)
                );
            }
        }
    }
}

#[test]
fn network_policy_is_on_by_default_and_can_be_turned_off() {
    let on = render(&[]);
    assert!(on.count("NetworkPolicy") > 0);
    assert!(
        operator_args(&on).contains(&"--network-policies".to_string()),
        "the operator adds each job's own policy"
    );
    let off = render(&[("networkPolicy.enabled", "false")]);
    assert_eq!(off.count("NetworkPolicy"), 0);
    assert!(!operator_args(&off).contains(&"--network-policies".to_string()));
    let roles = off.of_kind("ClusterRole").collect::<Vec<_>>();
    assert!(
        summarize(&rules_of(roles[0]))
            .iter()
            .all(|rule| !rule.contains("networkpolicies")),
        "no RBAC on NetworkPolicies the operator does not make"
    );
}

#[test]
fn the_chart_policy_admits_only_the_operator_to_jobmanagers() {
    let manifests = render(&[TEAMS]);
    let policies: Vec<NetworkPolicy> = manifests.typed("NetworkPolicy").expect("decode");
    let namespaces: BTreeSet<_> = policies
        .iter()
        .filter_map(|p| p.metadata.namespace.clone())
        .collect();
    assert_eq!(
        namespaces,
        BTreeSet::from(["team-a".into(), "team-b".into()])
    );
    assert_eq!(
        policies.len(),
        2,
        "a JobManager policy per namespace; each job's own policy comes from the operator"
    );
    for policy in policies {
        let spec = policy.spec.expect("spec");
        let selected = spec
            .pod_selector
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        assert_eq!(
            selected.get("app.kubernetes.io/name").map(String::as_str),
            Some("weir")
        );
        let component = selected
            .get("app.kubernetes.io/component")
            .cloned()
            .expect("a component");
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let ingress = spec.ingress.expect("ingress rules");
        // Who may reach which named port: (peer description, ports).
        let mut admitted = BTreeSet::new();
        for rule in &ingress {
            let ports: Vec<String> = rule
                .ports
                .iter()
                .flatten()
                .filter_map(|p| p.port.as_ref())
                .map(|p| match p {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => {
                        s.clone()
                    }
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => {
                        i.to_string()
                    }
                })
                .collect();
            let peers = rule.from.as_ref().expect("no rule admits everyone");
            assert!(!peers.is_empty(), "an empty `from` admits everyone");
            for peer in peers {
                assert!(peer.ip_block.is_none(), "no IP blocks");
                let pods = peer
                    .pod_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.clone())
                    .expect("every peer selects pods");
                let namespace = peer
                    .namespace_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.clone())
                    .and_then(|l| l.get("kubernetes.io/metadata.name").cloned())
                    .unwrap_or_else(|| "same namespace".into());
                let who = format!(
                    "{} in {namespace}",
                    pods.get("app.kubernetes.io/name")
                        .cloned()
                        .unwrap_or_default()
                        + "/"
                        + pods
                            .get("app.kubernetes.io/component")
                            .map(String::as_str)
                            .unwrap_or("any")
                );
                for port in &ports {
                    admitted.insert(format!("{who}: {port}"));
                }
            }
        }
        let expected: BTreeSet<String> = match component.as_str() {
            "jobmanager" => [format!("weir-operator/any in {RELEASE_NAMESPACE}: rest")]
                .into_iter()
                .collect(),
            other => panic!("a policy for {other:?}"),
        };
        assert_eq!(admitted, expected, "{component}");
    }
}

#[test]
fn service_monitor_scrapes_the_operator_only_when_enabled() {
    assert_eq!(render(&[]).count("ServiceMonitor"), 0);
    let manifests = render(&[("serviceMonitor.enabled", "true")]);
    let monitor = manifests
        .get_in("ServiceMonitor", RELEASE_NAMESPACE, OPERATOR)
        .expect("a ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    let service = manifests
        .of_kind("Service")
        .find(|s| {
            namespace_of(s) == RELEASE_NAMESPACE
                && s["metadata"]["labels"]["app.kubernetes.io/name"]
                    == selector["app.kubernetes.io/name"]
        })
        .expect("the ServiceMonitor selects the operator's metrics Service");
    assert_eq!(service["spec"]["ports"][0]["name"], "metrics");
}

#[test]
fn every_value_is_documented() {
    let path = repo_root().join("charts/weir/values.yaml");
    let text = std::fs::read_to_string(&path).expect("values.yaml");
    let undocumented = undocumented_values(&text);
    assert!(
        undocumented.is_empty(),
        "values without a `# --` comment above them (or above a parent): {undocumented:?}"
    );
}

/// Keys that hold a value (scalar, list or inline map) with no `# --` comment block directly
/// above them or above one of their parents. Parent maps need no comment of their own.
fn undocumented_values(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    // (indent, path segment, documented)
    let mut stack: Vec<(usize, String, bool)> = Vec::new();
    let mut missing = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, rest)) = trimmed.split_once(':') else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        while stack.last().is_some_and(|(i, _, _)| *i >= indent) {
            stack.pop();
        }
        let mut above = lines[..index]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with('#'));
        let documented_here = above.any(|l| l.trim_start().starts_with("# --"));
        let inherited = stack.iter().any(|(_, _, d)| *d);
        let path: Vec<_> = stack
            .iter()
            .map(|(_, k, _)| k.as_str())
            .chain([key])
            .collect();
        let holds_value = !rest.trim().is_empty()
            || lines
                .get(index + 1)
                .is_some_and(|next| next.trim_start().starts_with('-'));
        if holds_value && !documented_here && !inherited {
            missing.push(path.join("."));
        }
        stack.push((indent, key.to_string(), documented_here || inherited));
    }
    missing
}

#[test]
fn the_documentation_check_finds_an_undocumented_value() {
    let text = "# -- documented\na: 1\nb:\n  # -- nested\n  c: 2\n  d: 3\ne:\n  - x\n";
    assert_eq!(undocumented_values(text), ["b.d", "e"]);
}
