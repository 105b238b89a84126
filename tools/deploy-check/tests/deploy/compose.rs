//! `docker-compose.yml`: the Compose specification, each service's image,
//! settings, start order, mounts and healthcheck, and the drain deadlines.

use super::*;

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let checker = deploy_tool("check-jsonschema");
    if let Err(e) = run(Command::new(checker)
        .args([
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yml",
        ])
        .current_dir(repo_root()))
    {
        panic!("{e:#}");
    }
}

#[test]
fn compose_runs_each_service_from_its_image_target_with_settings_the_code_knows() {
    let file = dockerfile();
    let compose = compose();
    let collector = otel_collector_config(&compose);
    let collector_http_port = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
        .as_str()
        .and_then(|e| e.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .expect("the collector receives OTLP over HTTP on a port");
    let mut problems = Vec::new();
    for service in Service::ALL {
        let name = service.name();
        let spec = compose_service(&compose, name);
        let build = &spec["build"];
        if build["context"] != "." || build["target"] != name {
            problems.push(format!(
                "compose {name}: build is not context . target {name}: {build}"
            ));
        }
        if !build["dockerfile"].is_null() && build["dockerfile"] != "Dockerfile" {
            problems.push(format!(
                "compose {name}: build.dockerfile is not Dockerfile"
            ));
        }
        for arg in build["args"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            let declared = file
                .stages
                .iter()
                .flat_map(|s| &s.instructions)
                .any(|i| i.keyword == "ARG" && i.args.split('=').next() == Some(arg.as_str()));
            if !declared {
                problems.push(format!(
                    "compose {name}: build arg {arg} is not an ARG of the Dockerfile"
                ));
            }
        }

        let own = compose_environment(spec).unwrap();
        for (key, value) in &own {
            if value.contains('$') {
                problems.push(format!(
                    "compose {name}: {key}'s value contains $, which compose interpolates"
                ));
            }
            if !key.starts_with("WARREN_") && !known_non_setting_variable(key) {
                problems.push(format!(
                    "compose {name}: {key} is read by nothing in Warren"
                ));
            }
        }
        let settings =
            match service.load_settings(&settings_env(&compose_env(&file, &compose, service))) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("compose {name}: {e:#}"));
                    continue;
                }
            };
        if own.get("OTEL_SERVICE_NAME").map(String::as_str) != Some(name) {
            problems.push(format!("compose {name}: OTEL_SERVICE_NAME is not {name}"));
        }
        match own
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|e| url::Url::parse(e))
        {
            Some(Ok(endpoint)) => {
                let host = endpoint.host_str().unwrap_or_default();
                if !compose["services"][host].is_object() {
                    problems.push(format!(
                        "compose {name}: OTLP endpoint host {host} is no compose service"
                    ));
                }
                if endpoint.port() != Some(collector_http_port) {
                    problems.push(format!(
                        "compose {name}: OTLP endpoint {endpoint} is not the collector's OTLP/HTTP port \
                         {collector_http_port}"
                    ));
                }
            }
            other => problems.push(format!(
                "compose {name}: OTEL_EXPORTER_OTLP_ENDPOINT is {other:?}"
            )),
        }

        // Its ports: the ones it listens on.
        let ops = settings.port("ops.addr").ok();
        let http = settings.port("http.addr").ok();
        for port in compose_ports(spec).unwrap() {
            if Some(port.container) != ops && Some(port.container) != http {
                problems.push(format!(
                    "compose {name} publishes container port {}, where it does not listen",
                    port.container
                ));
            }
            if port.host_ip.as_deref() != Some("127.0.0.1") {
                problems.push(format!(
                    "compose {name}: publish on 127.0.0.1 only, like the rest of the stack"
                ));
            }
        }
        if service == Service::Gateway
            && !compose_ports(spec)
                .unwrap()
                .iter()
                .any(|p| Some(p.container) == http)
        {
            problems.push(format!(
                "compose gateway does not publish its HTTP port {http:?}"
            ));
        }

        // Healthcheck: the ops port, with bash's /dev/tcp (the image has
        // no curl).
        let test = health_script(spec);
        match (test, ops) {
            (Some(script), Some(ops)) if script.contains(&format!("/dev/tcp/127.0.0.1/{ops}")) => {}
            (script, ops) => problems.push(format!(
                "compose {name}: the healthcheck {script:?} does not probe the ops port {ops:?}"
            )),
        }

        // It starts once the broker is up.
        if spec["depends_on"]["rabbitmq"]["condition"] != "service_healthy" {
            problems.push(format!(
                "compose {name} does not wait for rabbitmq to be healthy"
            ));
        }
    }

    // The gateway publishes tasks with `mandatory`: unroutable until the
    // workers have declared their queues, so it starts after they are ready.
    let gateway = compose_service(&compose, "gateway");
    for worker in [Service::EmailWorker, Service::ImageWorker] {
        if gateway["depends_on"][worker.name()]["condition"] != "service_healthy" {
            problems.push(format!(
                "compose gateway does not wait for {} to be healthy (ready: queues declared)",
                worker.name()
            ));
        }
    }
    report(problems);
}

/// A compose service's `depends_on`, short (list) or long (map) form: each
/// dependency with its condition (`None`: the short form's
/// `service_started`).
fn depends_on<'a>(name: &str, service: &'a Value) -> Vec<(&'a str, Option<&'a str>)> {
    match &service["depends_on"] {
        Value::Null => Vec::new(),
        Value::Array(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(|d| (d, None))
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(d, c)| (d.as_str(), c["condition"].as_str()))
            .collect(),
        other => panic!("{name}: depends_on is {other}"),
    }
}

/// The script of a compose healthcheck of the form `[CMD, bash, -c, script]`.
fn health_script(service: &Value) -> Option<String> {
    let test: Vec<&str> = service["healthcheck"]["test"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match test.as_slice() {
        ["CMD", "bash", "-c", script] => Some((*script).to_owned()),
        _ => None,
    }
}

/// The collector config compose mounts for the otel-collector service.
fn otel_collector_config(compose: &Value) -> Value {
    let collector = compose_service(compose, "otel-collector");
    let config_arg = collector["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config="))
        .expect("the otel-collector command names its --config=");
    let path = mounted_host_path(collector, config_arg).unwrap_or_else(|| {
        panic!("otel-collector's {config_arg} is not mounted from the repository")
    });
    serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn compose_start_order_is_sound_and_waits_only_on_healthchecks_that_exist() {
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, spec) in services {
        for (dependency, condition) in depends_on(name, spec) {
            let Some(target) = services.get(dependency) else {
                problems.push(format!(
                    "{name} depends on {dependency}, which is no service"
                ));
                continue;
            };
            if condition == Some("service_healthy") && target["healthcheck"]["test"].is_null() {
                problems.push(format!(
                    "{name} waits for {dependency} to be healthy, but {dependency} has no healthcheck"
                ));
            }
            edges.entry(name.as_str()).or_default().push(dependency);
        }
    }
    // No cycles: compose would refuse to start.
    fn visit<'a>(
        node: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        problems: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if path.contains(&node) {
            problems.push(format!("depends_on cycle: {} -> {node}", path.join(" -> ")));
            return;
        }
        path.push(node);
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, path, done, problems);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for name in services.keys() {
        visit(name, &edges, &mut Vec::new(), &mut done, &mut problems);
    }

    // Healthchecks compose can run: a form it knows, durations it reads,
    // and an HTTP probe (wget, curl) of a port the container serves.
    for (name, spec) in services {
        let check = &spec["healthcheck"];
        if check.is_null() {
            continue;
        }
        for key in ["interval", "timeout", "start_period", "start_interval"] {
            if let Some(text) = check[key].as_str()
                && go_duration(text).is_none()
            {
                problems.push(format!(
                    "{name}: healthcheck {key} {text:?} is no duration compose reads"
                ));
            }
        }
        let test: Vec<&str> = check["test"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !matches!(test.as_slice(), ["CMD" | "CMD-SHELL", _, ..]) {
            problems.push(format!(
                "{name}: healthcheck test {test:?} is not [CMD, ...] or [CMD-SHELL, ...]"
            ));
        }
        let served: BTreeSet<u16> = compose_ports(spec)
            .unwrap()
            .iter()
            .map(|p| p.container)
            .collect();
        for url in test.iter().filter_map(|w| url::Url::parse(w).ok()) {
            if !matches!(url.scheme(), "http" | "https") {
                continue;
            }
            let local = matches!(url.host_str(), Some("127.0.0.1" | "localhost"));
            let port = url.port_or_known_default().unwrap_or_default();
            if !local || !served.contains(&port) {
                problems.push(format!(
                    "{name}: the healthcheck asks {url}, not a port the container serves \
                     ({served:?}) on its own loopback"
                ));
            }
        }
    }

    // RabbitMQ: healthy means answering, with the plugins the stack uses.
    let rabbitmq = compose_service(&compose, "rabbitmq");
    if rabbitmq["healthcheck"]["test"].is_null() {
        problems.push("rabbitmq has no healthcheck".to_owned());
    }
    let plugins = mounted_host_path(rabbitmq, "/etc/rabbitmq/enabled_plugins")
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .unwrap_or_default();
    for plugin in ["rabbitmq_management", "rabbitmq_prometheus"] {
        if !plugins.contains(plugin) {
            problems.push(format!("rabbitmq's enabled_plugins lacks {plugin}"));
        }
    }
    report(problems);
}

#[test]
fn compose_services_wait_for_the_services_they_talk_to() {
    let file = dockerfile();
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let host = |url: &str| {
        url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default()
    };
    // (service, the service it talks to, the setting that says so), read
    // from each one's configuration. Prometheus is left out on purpose: it
    // scrapes whatever answers, and a target that does not is what
    // WarrenWorkerDown is for.
    let mut talks: Vec<(String, String, String)> = Vec::new();
    for service in Service::ALL {
        let name = service.name();
        let settings = compose_settings(&file, &compose, service);
        let mut peer =
            |peer: String, why: &str| talks.push((name.to_owned(), peer, why.to_owned()));
        peer(host(settings.str("broker.url").unwrap()), "broker.url");
        if service == Service::EmailWorker && settings.str("email.transport").unwrap() == "smtp" {
            peer(
                settings.str("email.smtp.host").unwrap().to_owned(),
                "email.smtp.host",
            );
        }
        let env = compose_environment(compose_service(&compose, name)).unwrap();
        if let Some(endpoint) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            peer(host(endpoint), "OTEL_EXPORTER_OTLP_ENDPOINT");
        }
    }
    let grafana = compose_service(&compose, "grafana");
    let datasources = mounted_host_path(grafana, "/etc/grafana/provisioning/datasources")
        .expect("grafana's data sources are mounted from the repository");
    for entry in std::fs::read_dir(&datasources).unwrap() {
        let doc: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap())
                .unwrap();
        for source in doc["datasources"].as_array().into_iter().flatten() {
            let url = source["url"].as_str().unwrap_or_default();
            talks.push((
                "grafana".to_owned(),
                host(url),
                format!("data source {}", source["name"]),
            ));
        }
    }
    let collector = otel_collector_config(&compose);
    for (name, exporter) in collector["exporters"].as_object().into_iter().flatten() {
        if let Some(endpoint) = exporter["endpoint"].as_str() {
            let peer = endpoint.split("://").last().unwrap_or_default();
            let peer = peer.split(':').next().unwrap_or_default().to_owned();
            talks.push((
                "otel-collector".to_owned(),
                peer,
                format!("exporter {name}"),
            ));
        }
    }
    assert!(talks.len() >= 9, "too few connections found: {talks:?}");

    let mut problems = Vec::new();
    for (service, peer, why) in &talks {
        let Some(target) = services.get(peer) else {
            problems.push(format!(
                "{service} talks to {peer} ({why}), which is no compose service"
            ));
            continue;
        };
        let dependencies = depends_on(service, &services[service]);
        match dependencies.iter().find(|(d, _)| d == peer) {
            None => problems.push(format!(
                "{service} talks to {peer} ({why}) but does not depend on it"
            )),
            Some((_, condition))
                if !target["healthcheck"]["test"].is_null()
                    && *condition != Some("service_healthy") =>
            {
                problems.push(format!(
                    "{service} starts before {peer} ({why}) is healthy, though {peer} has a \
                     healthcheck: use condition service_healthy"
                ))
            }
            Some(_) => {}
        }
    }
    report(problems);
}

#[test]
fn compose_mounts_exist_and_the_configs_they_mount_point_at_real_services_and_ports() {
    let file = dockerfile();
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let mut problems = Vec::new();
    let named_volumes: BTreeSet<&str> = compose["volumes"]
        .as_object()
        .map(|v| v.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for (name, spec) in services {
        for mount in compose_mounts(spec).unwrap() {
            if mount.bind {
                if !repo_root().join(&mount.source).exists() {
                    problems.push(format!(
                        "{name} mounts {}, which does not exist",
                        mount.source
                    ));
                }
            } else if !named_volumes.contains(mount.source.as_str()) {
                problems.push(format!(
                    "{name} mounts volume {}, which is not declared",
                    mount.source
                ));
            }
        }
    }

    // Prometheus: promtool accepts the config and rules compose mounts, and
    // every Warren job scrapes the service of its name on its ops port.
    let prometheus = compose_service(&compose, "prometheus");
    let config_arg = prometheus["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("prometheus' command names --config.file=");
    let config_path = mounted_host_path(prometheus, config_arg)
        .unwrap_or_else(|| panic!("prometheus' {config_arg} is not mounted from the repository"));
    let config_dir = config_path.parent().unwrap().to_owned();
    let config_name = config_path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    {
        let _guard = process_lock();
        if let Err(e) = warren_deploy_check::prometheus::promtool(
            &config_dir,
            &["check", "config", &config_name],
        ) {
            problems.push(format!("{e:#}"));
        }
    }
    let config: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    for rules in config["rule_files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let _guard = process_lock();
        if let Err(e) =
            warren_deploy_check::prometheus::promtool(&config_dir, &["check", "rules", rules])
        {
            problems.push(format!("{e:#}"));
        }
    }
    for service in Service::ALL {
        let ops = ops_port(&compose_settings(&file, &compose, service), service);
        let job = config["scrape_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j["job_name"] == service.name());
        let targets: Vec<&str> = job
            .map(|j| {
                j["static_configs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["targets"].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect()
            })
            .unwrap_or_default();
        let expected = format!("{}:{ops}", service.name());
        if targets != [expected.as_str()] {
            problems.push(format!(
                "prometheus job {} scrapes {targets:?}, not the compose service on its ops port ({expected})",
                service.name()
            ));
        }
    }
    for job in config["scrape_configs"].as_array().into_iter().flatten() {
        for target in job["static_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["targets"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
        {
            let host = target.split(':').next().unwrap_or_default();
            if !services.contains_key(host) {
                problems.push(format!(
                    "prometheus scrapes {target}, and {host} is no compose service"
                ));
            }
        }
    }

    // Grafana: the home dashboard and the data source compose points it at.
    let grafana = compose_service(&compose, "grafana");
    let grafana_env = compose_environment(grafana).unwrap();
    if let Some(home) = grafana_env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        match mounted_host_path(grafana, home) {
            Some(path) if path.is_file() => {}
            _ => problems.push(format!(
                "grafana's home dashboard {home} is not a mounted file"
            )),
        }
    }
    if let Some(datasources) = mounted_host_path(grafana, "/etc/grafana/provisioning/datasources") {
        for entry in std::fs::read_dir(&datasources).unwrap() {
            let path = entry.unwrap().path();
            let doc: Value =
                serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for source in doc["datasources"].as_array().into_iter().flatten() {
                let url = url::Url::parse(source["url"].as_str().unwrap_or_default());
                let host = url
                    .as_ref()
                    .ok()
                    .and_then(|u| u.host_str())
                    .unwrap_or_default();
                if !services.contains_key(host) {
                    problems.push(format!(
                        "grafana data source {} points at {host}, no compose service",
                        source["name"]
                    ));
                }
            }
        }
    } else {
        problems
            .push("grafana's provisioning directory is not mounted from the repository".to_owned());
    }

    // The collector: a complete pipeline, exporting to a compose service.
    let collector = otel_collector_config(&compose);
    for (kind, list) in [
        ("receivers", "receivers"),
        ("processors", "processors"),
        ("exporters", "exporters"),
    ] {
        for pipeline in collector["service"]["pipelines"]
            .as_object()
            .into_iter()
            .flatten()
        {
            for component in pipeline.1[list]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if collector[kind][component].is_null() {
                    problems.push(format!(
                        "collector pipeline {} uses {kind} {component}, not defined",
                        pipeline.0
                    ));
                }
            }
        }
    }
    for extension in collector["service"]["extensions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if collector["extensions"][extension].is_null() {
            problems.push(format!("collector extension {extension} is not defined"));
        }
    }
    for (name, exporter) in collector["exporters"].as_object().into_iter().flatten() {
        if let Some(endpoint) = exporter["endpoint"].as_str() {
            let host = endpoint
                .split("://")
                .last()
                .unwrap_or_default()
                .split(':')
                .next()
                .unwrap_or_default();
            if !services.contains_key(host) {
                problems.push(format!(
                    "collector exporter {name} sends to {endpoint}: {host} is no compose service"
                ));
            }
        }
    }
    let jaeger = compose_service(&compose, "jaeger");
    if !compose_ports(jaeger)
        .unwrap()
        .iter()
        .any(|p| p.container == 16686)
    {
        problems.push("jaeger does not publish its UI (16686)".to_owned());
    }
    report(problems);
}

#[test]
fn the_compose_healthcheck_passes_against_a_ready_worker_and_fails_on_a_503_or_once_it_stopped() {
    let file = dockerfile();
    let compose = compose();
    // One script for every service, differing only in the port.
    let mut templates = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for service in Service::ALL {
        let ops = ops_port(&compose_settings(&file, &compose, service), service);
        let script =
            health_script(compose_service(&compose, service.name())).unwrap_or_else(|| {
                panic!(
                    "compose {} has no [CMD, bash, -c, ...] healthcheck",
                    service.name()
                )
            });
        let template = script.replace(
            &format!("/dev/tcp/127.0.0.1/{ops}"),
            "/dev/tcp/127.0.0.1/{port}",
        );
        templates.insert(template);
        for path in ["/healthz", "/readyz"] {
            if script.contains(&format!("GET {path} ")) {
                paths.insert(path.to_owned());
            }
        }
    }
    assert_eq!(
        templates.len(),
        1,
        "the services' healthchecks differ: {templates:#?}"
    );
    assert_ops_router_serves(&paths);
    let template = templates.pop_first().unwrap();

    // Built before the broker connection opens: a long build would let its
    // heartbeats lapse.
    let binary = {
        let _guard = process_lock();
        warren_tests::worker::binary("email-worker", "email-worker").unwrap()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let broker = TestBroker::new().await.unwrap();
        let outbox = tempfile::tempdir().unwrap();
        let env = vec![
            ("WARREN_BROKER__NAMESPACE", broker.namespace().to_owned()),
            ("WARREN_EMAIL__TRANSPORT", "outbox".to_owned()),
            (
                "WARREN_EMAIL__OUTBOX_DIR",
                outbox.path().display().to_string(),
            ),
            (
                "WARREN_EMAIL__TEMPLATES_DIR",
                repo_root()
                    .join("services/email-worker/templates")
                    .display()
                    .to_string(),
            ),
            ("WARREN_CONSUMER__EVENTS", "false".to_owned()),
            ("WARREN_OPS__ADDR", "127.0.0.1:0".to_owned()),
        ];
        let mut worker = {
            let _guard = process_lock_async().await;
            WorkerProcess::start(binary, "email-worker", &env)
                .await
                .unwrap()
        };
        let addr = worker.ops_addr().await.unwrap();
        worker.wait_ready().await.unwrap();
        let script = template.replace("{port}", &addr.port().to_string());
        let probe = |script: String| async move {
            let _guard = process_lock_async().await;
            tokio::process::Command::new("bash")
                .args(["-c", &script])
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .unwrap()
                .success()
        };

        let deadline = Instant::now() + Duration::from_secs(30);
        while !probe(script.clone()).await {
            assert!(
                Instant::now() < deadline,
                "the healthcheck `{script}` did not pass within 30 s against a ready worker:\n{}",
                worker.tail(20)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        worker.signal("TERM").unwrap();
        worker.wait_exit(Duration::from_secs(60)).await.unwrap();
        assert!(
            !probe(script.clone()).await,
            "the healthcheck `{script}` passes with no worker running"
        );
        broker.cleanup().await.unwrap();

        // A server that answers, but 503 (a worker draining, or not
        // connected): the healthcheck fails. The body says 200 to show the
        // script reads the status line only.
        let unready = answering(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\r\nnot ready (HTTP 200 soon)\n",
        );
        let script = template.replace("{port}", &unready.port().to_string());
        assert!(
            !probe(script.clone()).await,
            "the healthcheck `{script}` passes against a 503"
        );
        // The same server answering 200 passes: the 503 alone failed it.
        let ready = answering("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nready\n");
        let script = template.replace("{port}", &ready.port().to_string());
        assert!(
            probe(script.clone()).await,
            "the healthcheck `{script}` fails against a 200"
        );
    });
}

/// A local HTTP server that reads each request's head and answers it with
/// `response`, on a thread for the rest of the test binary's life.
fn answering(response: &'static str) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line == "\r\n" || line == "\n" {
                    break;
                }
                line.clear();
            }
            let _ = stream.write_all(response.as_bytes());
        }
    });
    addr
}

#[test]
fn workers_get_longer_to_stop_than_their_drain_deadline() {
    let file = dockerfile();
    let compose = compose();
    let manifests = manifests();
    let mut problems = Vec::new();
    for service in Service::ALL {
        let name = service.name();
        // What a clean stop takes: the drain for workers, the longest
        // request for the gateway.
        let deadline = |settings: &Settings| match service {
            Service::Gateway => settings.duration("http.request_timeout").unwrap(),
            // Closing its connection releases the lock; nothing to drain.
            Service::Conductor => Duration::from_secs(2),
            _ => settings.duration("consumer.shutdown_timeout").unwrap() + DRAIN_MARGIN,
        };

        let settings = compose_settings(&file, &compose, service);
        let grace = match compose_service(&compose, name)["stop_grace_period"].as_str() {
            None => Duration::from_secs(10), // compose's default
            Some(text) => go_duration(text).unwrap_or_else(|| {
                panic!("compose {name}: stop_grace_period {text:?} is no duration compose reads")
            }),
        };
        if grace <= deadline(&settings) {
            problems.push(format!(
                "compose {name}: stop_grace_period {grace:?} is not longer than {:?}",
                deadline(&settings)
            ));
        }

        let settings = k8s_settings(&file, &manifests, service);
        let pod = &deployment(&manifests, service).doc["spec"]["template"]["spec"];
        let grace =
            Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
        if grace <= deadline(&settings) {
            problems.push(format!(
                "Deployment {name}: terminationGracePeriodSeconds {grace:?} is not longer than {:?}",
                deadline(&settings)
            ));
        }
    }
    report(problems);
}

#[test]
fn services_that_share_work_agree_on_the_settings_they_share() {
    let file = dockerfile();
    let compose = compose();
    let manifests = manifests();
    let mut problems = Vec::new();
    let load = |place: &str, service: Service| match place {
        "docker-compose.yml" => compose_settings(&file, &compose, service),
        _ => k8s_settings(&file, &manifests, service),
    };
    for place in ["docker-compose.yml", "deploy/k8s"] {
        let email = load(place, Service::EmailWorker);
        let image = load(place, Service::ImageWorker);
        let gateway = load(place, Service::Gateway);
        for path in ["broker.url", "broker.namespace"] {
            for other in [&image, &gateway] {
                if email.get(path) != other.get(path) {
                    problems.push(format!("{place}: the services disagree on {path}"));
                }
            }
        }
        // The gateway writes uploads where the image worker reads them, and
        // checks tasks against the image worker's limits.
        for path in [
            "image.store",
            "image.s3",
            "image.max_width",
            "image.max_height",
            "image.max_pixels",
            "image.max_source_bytes",
            "image.max_inline_bytes",
        ] {
            if gateway.get(path) != image.get(path) {
                problems.push(format!(
                    "{place}: gateway's {path} = {:?}, image-worker's = {:?}",
                    gateway.get(path),
                    image.get(path)
                ));
            }
        }
        if image.get("image.store") == Some(&Value::from("local")) {
            let root = |s: &Settings| s.get("image.local_root").cloned();
            if root(&gateway) != root(&image) {
                problems.push(format!(
                    "{place}: gateway and image-worker have different local roots"
                ));
            }
        }
        // A delayed task goes to a delay queue the workers declared.
        for worker in [&email, &image] {
            if gateway.get("tasks.retry_delays") != worker.get("consumer.retry_delays") {
                problems.push(format!(
                    "{place}: gateway's tasks.retry_delays differ from a worker's"
                ));
            }
        }
        if gateway.get("email.max_attachment_bytes") != email.get("email.max_attachment_bytes") {
            problems.push(format!(
                "{place}: gateway and email-worker disagree on email.max_attachment_bytes"
            ));
        }
    }

    // Compose: the gateway and the image worker share the local store.
    let image = compose_settings(&file, &compose, Service::ImageWorker);
    if image.str("image.store").unwrap() == "local" {
        let root = image.str("image.local_root").unwrap();
        let volume = |service: &str| {
            compose_mounts(compose_service(&compose, service))
                .unwrap()
                .into_iter()
                .find(|m| m.target == root)
                .map(|m| m.source)
        };
        match (volume("gateway"), volume("image-worker")) {
            (Some(a), Some(b)) if a == b => {}
            other => problems.push(format!(
                "compose: gateway and image-worker must mount one volume at {root}: {other:?}"
            )),
        }
    }
    report(problems);
}
