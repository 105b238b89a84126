//! The `Dockerfile`: the release build, each service stage, hadolint, and
//! what `.dockerignore` keeps out of the build.

use super::*;

#[test]
fn the_dockerfile_builds_every_service_binary_with_the_documented_release_command() {
    let file = dockerfile();
    let builder = file
        .stage("builder")
        .expect("the Dockerfile has a stage named builder");
    let commands: Vec<String> = builder
        .instructions
        .iter()
        .filter(|i| i.keyword == "RUN")
        .filter_map(|i| cargo_build_command(&i.args))
        .collect();
    assert_eq!(
        commands.len(),
        1,
        "the builder runs one cargo build: {commands:?}"
    );
    let command = &commands[0];

    let documented: BTreeSet<String> = read("docs/deploy.md")
        .lines()
        .filter(|l| l.trim_start().starts_with("cargo build --release"))
        .filter_map(cargo_build_command)
        .collect();
    assert_eq!(
        documented,
        BTreeSet::from([command.clone()]),
        "the release build in docs/deploy.md must be the Dockerfile's"
    );

    let words = shell_words(command);
    for flag in ["--release", "--locked"] {
        assert!(words.iter().any(|w| w == flag), "{command} lacks {flag}");
    }
    let built: BTreeSet<String> = words
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1].clone())
        .collect();

    // What the workspace builds: each service's package has a binary of its
    // own name.
    let metadata = cargo_metadata();
    let mut service_bins = BTreeSet::new();
    for service in Service::ALL {
        let package = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == service.name())
            .unwrap_or_else(|| panic!("the workspace has no package {}", service.name()));
        let bins: Vec<&str> = package["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert!(
            bins.contains(&service.name()),
            "package {} has no binary {} (it has {bins:?})",
            service.name(),
            service.name()
        );
        service_bins.insert(service.name().to_owned());
    }
    assert_eq!(
        built, service_bins,
        "the Dockerfile builds exactly the services' binaries"
    );

    // ... and copies each out of the cached target directory.
    let copied = builder
        .instructions
        .iter()
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.args.as_str())
        .collect::<String>();
    for bin in &built {
        assert!(
            copied.contains(&format!("target/release/{bin}")),
            "the builder does not copy target/release/{bin} out"
        );
    }
}

#[test]
fn each_service_stage_runs_its_own_binary_as_a_non_root_user_on_the_builders_debian() {
    let file = dockerfile();
    let mut problems = Vec::new();

    // The builder: a pinned toolchain at least the workspace's rust-version.
    let builder = file.stage("builder").expect("a builder stage");
    let (toolchain, builder_debian) = builder
        .base
        .strip_prefix("rust:")
        .and_then(|tag| tag.split_once('-'))
        .unwrap_or_else(|| {
            panic!(
                "the builder is not rust:<version>-<debian>: {}",
                builder.base
            )
        });
    let metadata = cargo_metadata();
    let required = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["rust_version"].as_str())
        .filter_map(major_minor)
        .max()
        .expect("the workspace declares a rust-version");
    match major_minor(toolchain) {
        Some(pinned) if pinned >= required => {}
        Some(pinned) => problems.push(format!(
            "the builder's Rust {pinned:?} is older than the workspace's rust-version {required:?}"
        )),
        None => problems.push(format!(
            "the builder's toolchain {toolchain} is not pinned to a major.minor version"
        )),
    }

    for service in Service::ALL {
        let name = service.name();
        let Some(stage) = file.stage(name) else {
            problems.push(format!("the Dockerfile has no stage (target) {name}"));
            continue;
        };
        let root = file.root_image(name).unwrap_or_default();
        if root != format!("debian:{builder_debian}-slim") {
            problems.push(format!(
                "{name} runs on {root}, not on the builder's Debian ({builder_debian}): \
                 the binary needs the glibc it was linked against"
            ));
        }

        // The binary: copied from the builder, and the entrypoint.
        let copy = stage
            .instructions
            .iter()
            .filter(|i| i.keyword == "COPY")
            .map(|i| i.words())
            .find(|w| {
                w.iter().any(|x| x == "--from=builder")
                    && w.iter().any(|x| x == &format!("/out/{name}"))
            });
        let Some(copy) = copy else {
            problems.push(format!(
                "stage {name} does not copy /out/{name} from the builder"
            ));
            continue;
        };
        let destination = copy.last().cloned().unwrap_or_default();
        match file.last(name, "ENTRYPOINT").and_then(|i| i.exec_form()) {
            Some(entry) if entry == vec![destination.clone()] => {}
            other => problems.push(format!(
                "stage {name}: ENTRYPOINT is {other:?}, not [\"{destination}\"] (the exec form, \
                 so SIGTERM reaches the worker and not a shell)"
            )),
        }

        // Not root.
        let user = file
            .last(name, "USER")
            .map(|i| i.args.clone())
            .unwrap_or_else(|| "root".to_owned());
        let uid = user.split(':').next().unwrap_or_default();
        if uid.parse::<u32>().map_or(true, |uid| uid == 0) {
            problems.push(format!(
                "stage {name} runs as {user:?}: use a numeric non-root uid (runAsNonRoot can \
                 only verify a numeric one)"
            ));
        }

        // The image's own settings load, and EXPOSE names the ports the
        // service listens on with them.
        let settings = match service.load_settings(&settings_env(&file.env(name))) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("stage {name}'s ENV: {e:#}"));
                continue;
            }
        };
        let exposed: BTreeSet<u16> = file
            .all(name, "EXPOSE")
            .iter()
            .flat_map(|i| i.words())
            .filter_map(|p| p.split('/').next().and_then(|p| p.parse().ok()))
            .collect();
        let mut listens = BTreeSet::new();
        match settings.port("ops.addr") {
            Ok(port) => {
                listens.insert(port);
            }
            Err(e) => problems.push(format!("{name} has no ops port: {e:#}")),
        }
        if service == Service::Gateway {
            listens.insert(settings.port("http.addr").unwrap());
        }
        if exposed != listens {
            problems.push(format!(
                "stage {name} exposes {exposed:?}; the service listens on {listens:?}"
            ));
        }

        // Files copied from the build context exist.
        for copy in stage.instructions.iter().filter(|i| i.keyword == "COPY") {
            let words = copy.words();
            if words.iter().any(|w| w.starts_with("--from")) {
                continue;
            }
            let sources: Vec<&String> = words.iter().filter(|w| !w.starts_with("--")).collect();
            for source in &sources[..sources.len().saturating_sub(1)] {
                if !repo_root().join(source).exists() {
                    problems.push(format!(
                        "stage {name} copies {source}, which does not exist"
                    ));
                }
            }
        }
    }

    // What each service reads from its image must be there.
    let email = Service::EmailWorker.load_settings(&settings_env(&file.env("email-worker")));
    if let Ok(email) = email {
        let templates = email.str("email.templates_dir").unwrap().to_owned();
        let copied = file
            .stage("email-worker")
            .into_iter()
            .flat_map(|s| &s.instructions)
            .any(|i| {
                i.keyword == "COPY"
                    && i.words().first().map(String::as_str)
                        == Some("services/email-worker/templates")
                    && i.words().last() == Some(&templates)
            });
        if !copied {
            problems.push(format!(
                "the email-worker image does not copy services/email-worker/templates to \
                 email.templates_dir ({templates})"
            ));
        }
    }
    for service in [Service::ImageWorker, Service::Gateway] {
        let Ok(settings) = service.load_settings(&settings_env(&file.env(service.name()))) else {
            continue;
        };
        let root = settings.str("image.local_root").unwrap().to_owned();
        let created = file.all(service.name(), "RUN").iter().any(|i| {
            i.args.contains("install -d -o 10001 -g 10001") && i.words().last() == Some(&root)
        });
        if !created {
            problems.push(format!(
                "the {} image does not create image.local_root ({root}) owned by the service user",
                service.name()
            ));
        }
    }
    report(problems);
}

#[test]
fn hadolint_accepts_the_dockerfile() {
    let hadolint = deploy_tool("hadolint");
    if let Err(e) = run(Command::new(hadolint)
        .arg("Dockerfile")
        .current_dir(repo_root()))
    {
        panic!("{e:#}");
    }
}

/// Whether `.dockerignore` pattern `pattern` (Go's filepath.Match, `**`
/// for any number of directories) excludes `path` or a folder holding it.
fn dockerignore_excludes(pattern: &str, path: &str) -> bool {
    fn matches(pattern: &[&str], path: &[&str]) -> bool {
        match (pattern.first(), path.first()) {
            (None, _) => true, // a matched folder excludes what it holds
            (Some(&"**"), _) => {
                matches(&pattern[1..], path) || (!path.is_empty() && matches(pattern, &path[1..]))
            }
            (Some(_), None) => false,
            (Some(p), Some(segment)) => glob(p, segment) && matches(&pattern[1..], &path[1..]),
        }
    }
    fn glob(pattern: &str, text: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == text,
            Some((head, tail)) => {
                text.starts_with(head)
                    && (0..=text.len() - head.len()).any(|i| {
                        text.is_char_boundary(head.len() + i) && glob(tail, &text[head.len() + i..])
                    })
            }
        }
    }
    let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let path: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches(&pattern, &path)
}

#[test]
fn dockerignore_keeps_everything_the_build_needs() {
    assert!(dockerignore_excludes("target/", "target/release/x"));
    assert!(dockerignore_excludes("*.eml", "a.eml"));
    assert!(!dockerignore_excludes("*.eml", "outbox/a.eml"));
    assert!(dockerignore_excludes("**/*.eml", "outbox/a.eml"));
    assert!(!dockerignore_excludes(
        "outbox/",
        "services/email-worker/outbox"
    ));

    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(
        patterns.iter().all(|p| !p.starts_with('!')),
        "exceptions (!) in .dockerignore are not understood by this check"
    );
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    let root = repo_root().canonicalize().unwrap();
    for member in cargo_metadata()["packages"].as_array().unwrap() {
        let manifest = Path::new(member["manifest_path"].as_str().unwrap());
        let dir = manifest.parent().unwrap().canonicalize().unwrap();
        if let Ok(relative) = dir.strip_prefix(&root) {
            needed.push(relative.join("Cargo.toml").display().to_string());
            needed.push(relative.join("src").display().to_string());
        }
    }
    needed.push("services/email-worker/templates/welcome/body.txt".to_owned());
    let mut problems = Vec::new();
    for path in &needed {
        for pattern in &patterns {
            if dockerignore_excludes(pattern, path) {
                problems.push(format!(
                    ".dockerignore's {pattern} leaves {path} out of the build"
                ));
            }
        }
    }
    report(problems);
}
