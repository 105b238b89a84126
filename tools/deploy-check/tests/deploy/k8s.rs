//! `deploy/k8s`: the Kubernetes schemas, the kustomization, each
//! Deployment's image, probes, settings and resources, disruption budgets
//! and KEDA's scaling.

use super::*;

#[test]
fn the_kubernetes_manifests_pass_the_kubernetes_schemas() {
    let validator = deploy_tool("kubernetes-validate");
    let manifests = manifests();
    let mut problems = Vec::new();
    for path in k8s_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let expected: BTreeSet<String> = manifests
            .iter()
            .filter(|m| m.file == file && !m.is_keda() && !m.is_kustomization())
            .map(|m| format!("{}/{}", m.kind().to_ascii_lowercase(), m.name()))
            .collect();
        if expected.is_empty() {
            continue;
        }
        for version in KUBERNETES_VERSIONS {
            let mut command = Command::new(&validator);
            command.arg("--strict");
            if let Some(version) = version {
                command.args(["--kubernetes-version", version]);
            }
            command.arg(&path);
            let output = match run(&mut command) {
                Ok((stdout, stderr)) => stdout + &stderr,
                Err(e) => {
                    problems.push(format!("{e:#}"));
                    continue;
                }
            };
            // A misspelt kind only warns ("Couldn't find schema"): insist
            // that each resource was validated.
            let passed: BTreeSet<String> = output
                .lines()
                .filter_map(|l| l.split(" passed for resource ").nth(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
                .collect();
            for resource in expected.difference(&passed) {
                problems.push(format!(
                    "{file}: {resource} was not validated against Kubernetes {}:\n{output}",
                    version.unwrap_or("(newest)")
                ));
            }
        }
    }
    report(problems);
}

#[test]
fn the_kustomization_applies_every_manifest() {
    let kustomization =
        yaml_documents(&std::fs::read_to_string(k8s_dir().join("kustomization.yaml")).unwrap())
            .unwrap()
            .remove(0);
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("kustomization.yaml lists resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = k8s_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml's resources are not the manifest files"
    );
    let namespace = kustomization["namespace"]
        .as_str()
        .expect("kustomization.yaml sets a namespace");
    let manifests = manifests();
    assert!(
        find(&manifests, "Namespace", namespace).is_some(),
        "no Namespace {namespace} manifest"
    );
    // Every image the Deployments run is one kustomize pins.
    let pinned: BTreeSet<&str> = kustomization["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .collect();
    for service in Service::ALL {
        let image = container(deployment(&manifests, service), service)["image"]
            .as_str()
            .unwrap();
        assert!(
            pinned.contains(image),
            "kustomization.yaml does not pin image {image}"
        );
    }
    // ... to the version the workspace builds (the tag of a release).
    let metadata = cargo_metadata();
    for entry in kustomization["images"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().unwrap_or_default();
        let package = name.strip_prefix("warren/").unwrap_or(name);
        let version = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == package)
            .and_then(|p| p["version"].as_str())
            .unwrap_or_else(|| {
                panic!("kustomization.yaml pins {name}, no package of the workspace")
            });
        assert_eq!(
            entry["newTag"].as_str(),
            Some(version),
            "kustomization.yaml deploys {name} at another version than the workspace's"
        );
    }
}

#[test]
fn deployments_run_the_services_image_and_probe_the_ports_and_paths_the_code_serves() {
    let file = dockerfile();
    let manifests = manifests();
    let mut problems = Vec::new();
    let mut probe_paths = BTreeSet::new();
    for service in Service::ALL {
        let name = service.name();
        let deployment = deployment(&manifests, service);
        let container = container(deployment, service);
        let settings = k8s_settings(&file, &manifests, service);

        if container["image"] != format!("warren/{name}") {
            problems.push(format!(
                "Deployment {name} runs {}, not warren/{name}",
                container["image"]
            ));
        }
        if !container["command"].is_null() || !container["args"].is_null() {
            problems.push(format!(
                "Deployment {name} overrides the image's entrypoint"
            ));
        }
        let labels = &deployment.doc["spec"]["template"]["metadata"]["labels"];
        if deployment.doc["spec"]["selector"]["matchLabels"]
            .as_object()
            .is_none_or(|m| m.iter().any(|(k, v)| &labels[k] != v))
        {
            problems.push(format!(
                "Deployment {name}: the selector does not select its pods"
            ));
        }
        // Prometheus' pod discovery (deploy/prometheus/prometheus.yml) keys
        // on this label.
        if labels["app.kubernetes.io/name"] != name {
            problems.push(format!(
                "Deployment {name}: pods lack app.kubernetes.io/name: {name}"
            ));
        }

        let ports: BTreeMap<String, u64> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["containerPort"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let ops = match settings.port("ops.addr") {
            Ok(port) => u64::from(port),
            Err(e) => {
                problems.push(format!(
                    "Deployment {name}: the service has no ops port: {e:#}"
                ));
                continue;
            }
        };
        if ports.get("ops") != Some(&ops) {
            problems.push(format!(
                "Deployment {name}: port ops is {:?}, the service's is {ops}",
                ports.get("ops")
            ));
        }
        if service == Service::Gateway {
            let http = u64::from(settings.port("http.addr").unwrap());
            if ports.get("http") != Some(&http) {
                problems.push(format!(
                    "Deployment {name}: port http is {:?}, the service's is {http}",
                    ports.get("http")
                ));
            }
        }
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            let port = match &get["port"] {
                Value::String(named) => ports.get(named).copied(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            };
            if get["path"] != path || port != Some(ops) {
                problems.push(format!(
                    "Deployment {name}: {probe} is {get}, not GET {path} on the ops port {ops}"
                ));
            }
            probe_paths.insert(get["path"].as_str().unwrap_or_default().to_owned());
        }
    }
    // Services route to a named container port of the pods they select.
    for service in manifests.iter().filter(|m| m.kind() == "Service") {
        let selector = &service.doc["spec"]["selector"];
        let target = manifests.iter().find(|m| {
            m.kind() == "Deployment"
                && selector.as_object().is_some_and(|s| {
                    s.iter()
                        .all(|(k, v)| &m.doc["spec"]["template"]["metadata"]["labels"][k] == v)
                })
        });
        let Some(target) = target else {
            problems.push(format!(
                "Service {} selects no Deployment's pods",
                service.name()
            ));
            continue;
        };
        for port in service.doc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let exists = target.doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .any(|p| {
                    p["name"] == port["targetPort"] || p["containerPort"] == port["targetPort"]
                });
            if !exists {
                problems.push(format!(
                    "Service {}: targetPort {} is no container port",
                    service.name(),
                    port["targetPort"]
                ));
            }
        }
    }
    report(problems);
    assert_ops_router_serves(&probe_paths);
}

#[test]
fn deployments_get_settings_the_code_knows_and_secrets_only_from_secrets() {
    let file = dockerfile();
    let manifests = manifests();
    let mut problems = Vec::new();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for service in Service::ALL {
        let name = service.name();
        let env = pod_env(&file, &manifests, service);
        for (key, (_, source)) in &env {
            used.insert(
                source
                    .split_once(' ')
                    .map(|(k, n)| (k.to_owned(), n.to_owned()))
                    .unwrap_or_default(),
            );
            if !key.starts_with("WARREN_") && !known_non_setting_variable(key) {
                problems.push(format!(
                    "Deployment {name}: {key} (from {source}) is read by nothing in Warren"
                ));
            }
            if SECRET_VARIABLES.contains(&key.as_str()) && !source.starts_with("Secret ") {
                problems.push(format!(
                    "Deployment {name}: the secret {key} comes from {source}, not a Secret"
                ));
            }
        }
        let plain: BTreeMap<String, String> = env.into_iter().map(|(k, (v, _))| (k, v)).collect();
        if let Err(e) = service.load_settings(&settings_env(&plain)) {
            problems.push(format!("Deployment {name}: {e:#}"));
        }
        if plain.get("OTEL_SERVICE_NAME").map(String::as_str) != Some(name) {
            problems.push(format!(
                "Deployment {name}: OTEL_SERVICE_NAME is not {name}"
            ));
        }
    }
    // Secret values never sit in a ConfigMap, even one nobody uses.
    for manifest in manifests.iter().filter(|m| m.kind() == "ConfigMap") {
        for key in manifest_data(manifest).unwrap().keys() {
            if SECRET_VARIABLES.contains(&key.as_str()) {
                problems.push(format!(
                    "ConfigMap {} holds the secret {key}",
                    manifest.name()
                ));
            }
        }
    }
    // Every ConfigMap and Secret is used by a Deployment or by KEDA.
    for manifest in manifests.iter().filter(|m| m.is_keda()) {
        for reference in manifest.doc["spec"]["secretTargetRef"]
            .as_array()
            .into_iter()
            .flatten()
        {
            used.insert((
                "Secret".to_owned(),
                reference["name"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    for manifest in manifests
        .iter()
        .filter(|m| m.kind() == "ConfigMap" || m.kind() == "Secret")
    {
        if !used.contains(&(manifest.kind().to_owned(), manifest.name().to_owned())) {
            problems.push(format!(
                "{} {} is used by nothing",
                manifest.kind(),
                manifest.name()
            ));
        }
    }
    report(problems);
}

#[test]
fn every_container_has_resource_requests_and_limits_and_runs_locked_down() {
    let manifests = manifests();
    let mut problems = Vec::new();
    for deployment in manifests.iter().filter(|m| m.kind() == "Deployment") {
        let pod = &deployment.doc["spec"]["template"]["spec"];
        if pod["securityContext"]["runAsNonRoot"] != true {
            problems.push(format!(
                "Deployment {}: runAsNonRoot is not true",
                deployment.name()
            ));
        }
        for container in pod["containers"].as_array().into_iter().flatten() {
            let name = format!(
                "{}/{}",
                deployment.name(),
                container["name"].as_str().unwrap_or_default()
            );
            for resource in ["cpu", "memory"] {
                let request = &container["resources"]["requests"][resource];
                let limit = &container["resources"]["limits"][resource];
                match (quantity(request), quantity(limit)) {
                    (Ok(request), Ok(limit)) if request > 0.0 && request <= limit => {}
                    _ => problems.push(format!(
                        "{name}: {resource} request {request} and limit {limit} are not both set with request <= limit"
                    )),
                }
            }
            let security = &container["securityContext"];
            if security["allowPrivilegeEscalation"] != false
                || security["readOnlyRootFilesystem"] != true
                || security["capabilities"]["drop"] != serde_json::json!(["ALL"])
            {
                problems.push(format!(
                    "{name}: securityContext must forbid privilege escalation, make the root file system \
                     read-only and drop all capabilities"
                ));
            }
        }
    }
    report(problems);
}

#[test]
fn resources_cover_what_each_service_may_hold_and_run() {
    let file = dockerfile();
    let manifests = manifests();
    let mut problems = Vec::new();
    for service in Service::ALL {
        let name = service.name();
        let settings = k8s_settings(&file, &manifests, service);
        let container = container(deployment(&manifests, service), service);
        let resources = &container["resources"];
        let request = quantity(&resources["requests"]["memory"]).unwrap();
        let limit = quantity(&resources["limits"]["memory"]).unwrap();
        let number = |path: &str| {
            settings
                .get(path)
                .and_then(Value::as_f64)
                .unwrap_or_else(|| panic!("{name} has no numeric setting {path}"))
        };
        // What the service holds for good once busy, and at most.
        let (steady, worst, what) = match service {
            Service::Gateway => {
                let view = number("events.max_tracked_tasks") * GATEWAY_BYTES_PER_TRACKED_TASK;
                let upload = number("http.max_upload_bytes").min(number("image.max_source_bytes"));
                // Uploads are held whole while stored, at most this many at once.
                let uploads = number("http.max_concurrent_uploads");
                (
                    view,
                    view + uploads * upload,
                    format!(
                        "a full status view (events.max_tracked_tasks x {GATEWAY_BYTES_PER_TRACKED_TASK} \
                         bytes), then http.max_concurrent_uploads ({uploads}) uploads of http.max_upload_bytes"
                    ),
                )
            }
            // Its schedules and one fire at a time.
            Service::Conductor => (
                0.0,
                16.0 * 1024.0 * 1024.0,
                "its schedules and one fire at a time".to_owned(),
            ),
            Service::EmailWorker => (
                0.0,
                number("consumer.prefetch")
                    * number("email.max_attachment_bytes")
                    * EMAIL_ATTACHMENT_COPIES,
                format!(
                    "consumer.prefetch tasks with email.max_attachment_bytes of attachments, \
                     {EMAIL_ATTACHMENT_COPIES} copies each"
                ),
            ),
            Service::ImageWorker => {
                // CPU-bound: one image thread per core, requested and
                // limited alike, so no thread is throttled or left idle
                // (image.threads 0 means one per core the container may use).
                let cpu_request = quantity(&resources["requests"]["cpu"]).unwrap();
                let cpu_limit = quantity(&resources["limits"]["cpu"]).unwrap();
                let threads = match number("image.threads") {
                    t if t < 1.0 => cpu_limit.ceil(),
                    t => t,
                };
                if cpu_request != cpu_limit || threads != cpu_limit {
                    problems.push(format!(
                        "Deployment {name}: {threads} image threads on a CPU request of \
                         {cpu_request} and a limit of {cpu_limit}: make all three equal"
                    ));
                }
                (
                    0.0,
                    threads * number("image.max_alloc_bytes")
                        + number("consumer.concurrency") * number("image.max_source_bytes"),
                    "image.max_alloc_bytes per image thread, and image.max_source_bytes per \
                     task in progress"
                        .to_owned(),
                )
            }
        };
        let needs_request = PROCESS_BASELINE_BYTES + steady;
        let needs_limit = PROCESS_BASELINE_BYTES + worst;
        if request < needs_request {
            problems.push(format!(
                "Deployment {name}: memory request {:.0} MiB is below the {:.0} MiB it holds \
                 for good (the process, and {what})",
                request / MIB,
                needs_request / MIB
            ));
        }
        if limit < needs_limit {
            problems.push(format!(
                "Deployment {name}: memory limit {:.0} MiB is below the {:.0} MiB it may hold \
                 (the process, and {what})",
                limit / MIB,
                needs_limit / MIB
            ));
        }
    }
    report(problems);
}

#[test]
fn every_deployment_has_a_disruption_budget_that_selects_its_pods() {
    let manifests = manifests();
    let mut problems = Vec::new();
    for deployment in manifests.iter().filter(|m| m.kind() == "Deployment") {
        let labels = &deployment.doc["spec"]["template"]["metadata"]["labels"];
        let budgets: Vec<&Manifest> = manifests
            .iter()
            .filter(|m| m.kind() == "PodDisruptionBudget")
            .filter(|m| {
                m.doc["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
            })
            .collect();
        match budgets.as_slice() {
            [budget] => {
                let spec = &budget.doc["spec"];
                if spec["maxUnavailable"].is_null() == spec["minAvailable"].is_null() {
                    problems.push(format!(
                        "PodDisruptionBudget {}: set one of maxUnavailable, minAvailable",
                        budget.name()
                    ));
                }
                // A worker may scale to one replica (or zero): minAvailable
                // would then block every node drain.
                if deployment.doc["spec"]["replicas"].is_null() && !spec["minAvailable"].is_null() {
                    problems.push(format!(
                        "PodDisruptionBudget {}: use maxUnavailable for an autoscaled Deployment",
                        budget.name()
                    ));
                }
            }
            other => problems.push(format!(
                "Deployment {} is covered by {} disruption budgets, not one",
                deployment.name(),
                other.len()
            )),
        }
    }
    report(problems);
}

#[test]
fn keda_scales_each_worker_on_ready_plus_unacked_messages_of_its_own_queue() {
    let file = dockerfile();
    let manifests = manifests();
    let mut problems = Vec::new();
    let scaled: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.kind() == "ScaledObject")
        .collect();
    for manifest in manifests.iter().filter(|m| m.is_keda()) {
        if manifest.doc["apiVersion"] != "keda.sh/v1alpha1" || manifest.name().is_empty() {
            problems.push(format!(
                "{}: a KEDA resource needs apiVersion keda.sh/v1alpha1 and a name",
                manifest.file
            ));
        }
        if !["ScaledObject", "TriggerAuthentication"].contains(&manifest.kind()) {
            problems.push(format!(
                "{}: unexpected KEDA kind {}",
                manifest.file,
                manifest.kind()
            ));
        }
    }

    for service in Service::ALL {
        let name = service.name();
        let mine: Vec<&&Manifest> = scaled
            .iter()
            .filter(|m| m.doc["spec"]["scaleTargetRef"]["name"] == name)
            .collect();
        let Some(stem) = service.queue_stem() else {
            if !mine.is_empty() {
                problems.push(format!(
                    "{name} consumes no queue; KEDA should not scale it on one"
                ));
            }
            continue;
        };
        let [object] = mine.as_slice() else {
            problems.push(format!(
                "{} ScaledObjects target {name}, not one",
                mine.len()
            ));
            continue;
        };
        let spec = &object.doc["spec"];
        let deployment = deployment(&manifests, service);
        if !deployment.doc["spec"]["replicas"].is_null() {
            problems.push(format!(
                "Deployment {name} sets replicas, which every apply would reset under the autoscaler"
            ));
        }
        let target_kind = spec["scaleTargetRef"]["kind"]
            .as_str()
            .unwrap_or("Deployment");
        if target_kind != "Deployment" {
            problems.push(format!(
                "ScaledObject {}: scaleTargetRef.kind is {target_kind}",
                object.name()
            ));
        }

        let settings = k8s_settings(&file, &manifests, service);
        let min = spec["minReplicaCount"].as_u64().unwrap_or(0);
        let max = spec["maxReplicaCount"].as_u64().unwrap_or(100);
        if min > max || max == 0 {
            problems.push(format!(
                "ScaledObject {}: replicas {min}..{max}",
                object.name()
            ));
        }
        if let Some(fallback) = spec["fallback"]["replicas"].as_u64()
            && (fallback > max || fallback < min.max(1))
        {
            problems.push(format!(
                "ScaledObject {}: fallback replicas {fallback} outside {min}..{max}",
                object.name()
            ));
        }
        // Going down must not outrun the tasks in flight.
        let task_timeout = settings.duration("consumer.task_timeout").unwrap();
        let window = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
            ["stabilizationWindowSeconds"]
            .as_u64()
            .unwrap_or(300);
        if Duration::from_secs(window) <= task_timeout {
            problems.push(format!(
                "ScaledObject {}: the scale-down window ({window}s) is not longer than consumer.task_timeout",
                object.name()
            ));
        }
        if min == 0 {
            let cooldown = spec["cooldownPeriod"].as_u64().unwrap_or(300);
            if Duration::from_secs(cooldown) <= task_timeout {
                problems.push(format!(
                    "ScaledObject {}: cooldownPeriod ({cooldown}s) is not longer than consumer.task_timeout",
                    object.name()
                ));
            }
        }

        let triggers = spec["triggers"].as_array().cloned().unwrap_or_default();
        if triggers.is_empty() {
            problems.push(format!("ScaledObject {} has no triggers", object.name()));
        }
        for trigger in &triggers {
            let Some(metadata) = trigger["metadata"].as_object() else {
                problems.push(format!(
                    "ScaledObject {}: a trigger without metadata",
                    object.name()
                ));
                continue;
            };
            if trigger["type"] != "rabbitmq" {
                problems.push(format!(
                    "ScaledObject {}: trigger type {} (expected rabbitmq)",
                    object.name(),
                    trigger["type"]
                ));
                continue;
            }
            let meta = |key: &str| metadata.get(key).and_then(Value::as_str);
            for key in metadata.keys() {
                if !KEDA_RABBITMQ_METADATA.contains(&key.as_str()) {
                    problems.push(format!(
                        "ScaledObject {}: KEDA's rabbitmq scaler has no parameter {key}",
                        object.name()
                    ));
                }
            }
            // Ready + unacked: the management API's `messages`.
            if meta("protocol") != Some("http")
                || meta("mode") != Some("QueueLength")
                || meta("excludeUnacknowledged").is_some_and(|v| v != "false")
            {
                problems.push(format!(
                    "ScaledObject {}: count ready + unacked messages: protocol http, mode QueueLength, \
                     excludeUnacknowledged unset or \"false\" (amqp mode counts ready messages only, \
                     kedacore/keda#356)",
                    object.name()
                ));
            }
            let queue = Names::new(settings.str("broker.namespace").unwrap()).work_queue(stem);
            if meta("queueName") != Some(queue.as_str()) {
                problems.push(format!(
                    "ScaledObject {}: queueName is {:?}, the worker consumes {queue}",
                    object.name(),
                    meta("queueName")
                ));
            }
            let concurrency = settings
                .get("consumer.concurrency")
                .and_then(Value::as_u64)
                .unwrap();
            let value = meta("value").and_then(|v| v.parse::<f64>().ok());
            if value != Some(concurrency as f64) {
                problems.push(format!(
                    "ScaledObject {}: value is {:?}, not the worker's consumer.concurrency ({concurrency}): \
                     keda.yaml explains why",
                    object.name(),
                    meta("value")
                ));
            }
            if let Some(activation) = meta("activationValue")
                && activation.parse::<f64>().is_err()
            {
                problems.push(format!(
                    "ScaledObject {}: activationValue {activation} is no number",
                    object.name()
                ));
            }
            // The management API of the broker the workers use.
            let broker = url::Url::parse(settings.str("broker.url").unwrap()).unwrap();
            let host = meta("host").map(url::Url::parse);
            match host {
                Some(Ok(api)) => {
                    let api_host = api.host_str().unwrap_or_default();
                    let broker_host = broker.host_str().unwrap_or_default();
                    if api_host.split('.').next() != Some(broker_host)
                        || !matches!(api.scheme(), "http" | "https")
                    {
                        problems.push(format!(
                            "ScaledObject {}: host {api} is not the management API of the broker {broker_host}",
                            object.name()
                        ));
                    }
                }
                other => {
                    problems.push(format!("ScaledObject {}: host is {other:?}", object.name()))
                }
            }
            let vhost = broker
                .path()
                .trim_start_matches('/')
                .replace("%2f", "/")
                .replace("%2F", "/");
            if meta("vhostName") != Some(vhost.as_str()) {
                problems.push(format!(
                    "ScaledObject {}: vhostName {:?} is not the broker URL's vhost {vhost:?}",
                    object.name(),
                    meta("vhostName")
                ));
            }
            // Credentials from a TriggerAuthentication whose Secret exists.
            let auth_name = trigger["authenticationRef"]["name"]
                .as_str()
                .unwrap_or_default();
            let Some(auth) = find(&manifests, "TriggerAuthentication", auth_name) else {
                problems.push(format!(
                    "ScaledObject {}: no TriggerAuthentication {auth_name}",
                    object.name()
                ));
                continue;
            };
            let mut parameters = BTreeSet::new();
            for reference in auth.doc["spec"]["secretTargetRef"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let parameter = reference["parameter"].as_str().unwrap_or_default();
                parameters.insert(parameter);
                if !KEDA_RABBITMQ_AUTH.contains(&parameter) {
                    problems.push(format!(
                        "TriggerAuthentication {auth_name}: no rabbitmq parameter {parameter}"
                    ));
                }
                let secret = reference["name"].as_str().unwrap_or_default();
                let key = reference["key"].as_str().unwrap_or_default();
                let has_key = find(&manifests, "Secret", secret)
                    .map(|s| manifest_data(s).unwrap().contains_key(key))
                    .unwrap_or(false);
                if !has_key {
                    problems.push(format!(
                        "TriggerAuthentication {auth_name}: Secret {secret} has no key {key}"
                    ));
                }
            }
            if parameters.contains("username") != parameters.contains("password") {
                problems.push(format!(
                    "TriggerAuthentication {auth_name}: username and password go together"
                ));
            }
        }
    }
    report(problems);
}
