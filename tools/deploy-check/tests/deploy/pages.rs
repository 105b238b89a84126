//! What `docs/deploy.md` and `docs/observability.md` say about the deploy
//! files: the ports compose publishes, every dashboard panel and alert, and
//! the links of "Running in production".

use super::*;

/// The section under the heading `title` of the docs page `page`, its
/// subsections included.
fn doc_section<'a>(text: &'a str, page: &str, title: &str) -> &'a str {
    docs::section(text, title).unwrap_or_else(|| panic!("{page} has no section {title}"))
}

#[test]
fn the_docs_list_every_port_compose_publishes() {
    let compose = compose();
    let deploy = read("docs/deploy.md");
    let section = doc_section(&deploy, "docs/deploy.md", "Running with Docker");
    let mut problems = Vec::new();
    for (name, spec) in compose["services"].as_object().unwrap() {
        if !section.contains(&format!("`{name}`")) {
            problems.push(format!(
                "docs/deploy.md, Running with Docker, does not list the service `{name}`"
            ));
        }
        for port in compose_ports(spec).unwrap() {
            let Some(host) = port.host else { continue };
            let mentioned = section
                .split(|c: char| !c.is_ascii_digit())
                .any(|n| n == host.to_string());
            if !mentioned {
                problems.push(format!(
                    "docs/deploy.md, Running with Docker, does not list {name}'s port {host}"
                ));
            }
        }
    }
    report(problems);
}

/// Every panel of a Grafana dashboard, those inside rows included; rows
/// themselves are headings, not panels.
fn dashboard_panels(panels: &Value, out: &mut Vec<String>) {
    for panel in panels.as_array().into_iter().flatten() {
        if panel["type"] != "row" {
            out.push(panel["title"].as_str().unwrap_or_default().to_owned());
        }
        dashboard_panels(&panel["panels"], out);
    }
}

#[test]
fn the_docs_explain_every_dashboard_panel_and_alert_and_link_what_they_cite() {
    let observability = read("docs/observability.md");
    let deploy = read("docs/deploy.md");
    let production = doc_section(&deploy, "docs/deploy.md", "Running in production");
    let mut problems = Vec::new();

    // Each dashboard and each of its panels, by title.
    let mut dashboards = 0;
    for entry in std::fs::read_dir(repo_root().join("deploy/grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        dashboards += 1;
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let title = dashboard["title"].as_str().unwrap_or_default();
        if !observability.contains(&format!("**{title}**")) {
            problems.push(format!(
                "docs/observability.md does not describe the dashboard **{title}**"
            ));
        }
        let mut panels = Vec::new();
        dashboard_panels(&dashboard["panels"], &mut panels);
        assert!(!panels.is_empty(), "{title} has no panels");
        for panel in panels {
            if !observability.contains(&format!("*{panel}*")) {
                problems.push(format!(
                    "docs/observability.md does not say what the panel *{panel}* of {title} shows"
                ));
            }
        }
    }
    assert!(dashboards >= 2, "no dashboards found");

    // Each alert: what it means (Observability) and what to do about it
    // in production.
    let rules: Value =
        serde_yaml_ng::from_str(&read("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let alerts: Vec<&str> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert!(!alerts.is_empty(), "alerts.yml has no alerts");
    for alert in alerts {
        for (section, text) in [
            ("docs/observability.md", observability.as_str()),
            ("docs/deploy.md, Running in production", production),
        ] {
            if !text.contains(&format!("| `{alert}` |")) {
                problems.push(format!("{section} has no row for the alert {alert}"));
            }
        }
    }

    // What the issue asks of the section, and links to what it cites (that
    // every relative link leads to a file and heading is the docs check's).
    for heading in [
        "What a replica buys",
        "Autoscaling",
        "Dashboards and alerts in production",
        "Draining a worker",
    ] {
        if !production.contains(&format!("\n### {heading}\n")) {
            problems.push(format!(
                "docs/deploy.md, Running in production, has no ### {heading}"
            ));
        }
    }
    for wanted in [
        "performance.md",
        "observability.md#dashboards",
        "observability.md#alerts",
    ] {
        if !production.contains(&format!("]({wanted})")) {
            problems.push(format!(
                "docs/deploy.md, Running in production, does not link {wanted}"
            ));
        }
    }
    for file in ["docs/deploy.md", "docs/observability.md"] {
        problems.extend(docs::broken_links(file));
    }
    report(problems);
}
