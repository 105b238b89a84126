//! Talking to a service's ops port the way Prometheus and Kubernetes do:
//! plain HTTP GETs, and reading values out of the text exposition.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path` over HTTP/1.1; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let request = async {
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .context("no HTTP answer within 10 s")??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of HTTP headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        if after.len() < size {
            bail!("truncated chunk");
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// The value of the sample `name` whose labels include every pair of
/// `labels`, summed over the samples that match (so leaving a label out
/// sums across it).
///
/// # Panics
///
/// When no sample matches: a misspelt name or label must fail the test, not
/// read as 0. Use [`sample_or_zero`] where a series legitimately does not
/// exist yet.
pub fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    try_sample(exposition, name, labels).unwrap_or_else(|| {
        let same_name: Vec<&str> = exposition
            .lines()
            .filter(|l| !l.starts_with('#') && metric_name(l) == Some(name))
            .collect();
        panic!("no sample of {name} with labels {labels:?}; the samples of {name}: {same_name:#?}")
    })
}

/// Like [`sample`], but 0 when nothing matches: for a counter whose series
/// appears at its first increment (`prometheus` creates a labelled series
/// on first use), read before anything could have incremented it.
pub fn sample_or_zero(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    try_sample(exposition, name, labels).unwrap_or(0.0)
}

/// The sum of the samples `name` with `labels`, or `None` when no sample
/// matches.
pub fn try_sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The metric name of a sample line.
fn metric_name(line: &str) -> Option<&str> {
    line.split(['{', ' ']).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_and_summed_by_labels() {
        let text =
            "# HELP x y\n# TYPE x counter\nx{a=\"1\",b=\"2\"} 3\nx{a=\"1\",b=\"3\"} 4\ny 7\n";
        assert_eq!(sample(text, "x", &[("a", "1")]), 7.0);
        assert_eq!(sample(text, "x", &[("b", "3")]), 4.0);
        assert_eq!(sample(text, "y", &[]), 7.0);
        assert_eq!(try_sample(text, "z", &[]), None);
        assert_eq!(try_sample(text, "x", &[("a", "2")]), None);
        assert_eq!(sample_or_zero(text, "z", &[]), 0.0);
    }

    #[test]
    #[should_panic(expected = "no sample of x with labels")]
    fn a_missing_series_fails() {
        sample("x{a=\"1\"} 3\n", "x", &[("a", "2")]);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
    }
}
