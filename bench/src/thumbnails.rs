//! Section 8: whole image workers. N `image.thumbnail` tasks (a 500x500
//! `contain` JPEG of quality 85 each, the sources in turn) through the
//! real `image-worker` process (release build, its defaults, the local
//! store), timed from the worker's start (start-up included) to the last
//! thumbnail written; with `--peers celery`, the same tasks and the same
//! source files through the seed's `process_image` (Pillow in a Celery
//! prefork worker of 2 processes, `bench/peers/celery_image.py`), in
//! rounds alternating with Warren's.
//!
//! The sources are made here, photo-like (a gradient with noise, so JPEG
//! has detail to code): 6000x4000, 4000x3000 and 1920x1080 JPEGs of
//! quality 90 and a 1920x1080 PNG. Both sides count the `.jpg` files in
//! their output directory (both write under a temporary name and rename),
//! so "done" means the same thing for both.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::broker::{BenchBroker, IMAGE_STEM};
use crate::config::Config;
use crate::email::e2e::{status_kib, stop};
use crate::peers::{Peer, bench_dir, venv_bin};
use crate::process::sibling_exe;
use crate::report::Report;
use crate::stats::{median, ratio, round};

/// The thumbnail every task asks for.
const BOX: u32 = 500;
const QUALITY: u8 = 85;
/// Celery's prefork processes: one per core, as the seed ran it.
const CELERY_PROCESSES: usize = 2;

/// A photo-like picture: gradients, a texture and xorshift noise.
fn photo(width: u32, height: u32) -> RgbImage {
    let mut state = 0x2545_f491_u32;
    RgbImage::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state & 0x1f) as u8;
        Rgb([
            ((x * 200 / width) as u8).saturating_add(noise),
            ((y * 200 / height) as u8).saturating_add(noise / 2),
            (((x / 7) ^ (y / 5)) & 0x3f) as u8 + 96 + noise / 4,
        ])
    })
}

/// Writes the source set into `dir`; returns the file names.
fn make_sources(dir: &Path, smoke: bool) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let set: &[(u32, u32, &str)] = if smoke {
        &[(64, 48, "jpg"), (64, 48, "png")]
    } else {
        &[
            (6000, 4000, "jpg"),
            (4000, 3000, "jpg"),
            (1920, 1080, "jpg"),
            (1920, 1080, "png"),
        ]
    };
    let mut names = Vec::new();
    for (w, h, ext) in set {
        let image = photo(*w, *h);
        let mut out = Cursor::new(Vec::new());
        if *ext == "jpg" {
            JpegEncoder::new_with_quality(&mut out, 90).write_image(
                image.as_raw(),
                *w,
                *h,
                ExtendedColorType::Rgb8,
            )?;
        } else {
            PngEncoder::new(&mut out).write_image(
                image.as_raw(),
                *w,
                *h,
                ExtendedColorType::Rgb8,
            )?;
        }
        let name = format!("{w}x{h}.{ext}");
        std::fs::write(dir.join(&name), out.into_inner())?;
        names.push(name);
    }
    Ok(names)
}

/// `.jpg` files under `dir`, any depth.
fn count_jpegs(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                count_jpegs(&path)
            } else {
                usize::from(path.extension().is_some_and(|x| x == "jpg"))
            }
        })
        .sum()
}

/// One run of either side.
struct Run {
    seconds: f64,
    /// Peak resident set of the worker's process tree, KiB.
    peak_rss_kib: u64,
}

/// Waits until `out` holds `n` thumbnails, sampling the worker tree's RSS.
async fn wait_outputs(
    child: &mut Child,
    pid: u32,
    out: &Path,
    n: usize,
    started: Instant,
    budget: Duration,
) -> anyhow::Result<Run> {
    let mut peak = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        peak = peak.max(tree_rss_kib(pid));
        if count_jpegs(out) >= n {
            return Ok(Run {
                seconds: started.elapsed().as_secs_f64(),
                peak_rss_kib: peak,
            });
        }
        if started.elapsed() > budget {
            bail!("{} of {n} thumbnails within {budget:?}", count_jpegs(out));
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the worker exited: {status}");
        }
    }
}

/// The resident set of `pid` and its children, KiB.
fn tree_rss_kib(pid: u32) -> u64 {
    let mut total = status_kib(pid, "VmRSS").unwrap_or(0);
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        total += tree_rss_kib(child);
    }
    total
}

fn budget(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(n as u64 * 500)
}

/// Warren: the image worker over a queue filled with `n` tasks.
async fn warren_once(
    bench: &BenchBroker,
    root: &Path,
    sources: &[String],
    n: usize,
) -> anyhow::Result<Run> {
    let src = root.join("sources");
    std::fs::create_dir_all(&src)?;
    for name in sources {
        std::fs::hard_link(root.join("..").join("sources").join(name), src.join(name)).or_else(
            |_| {
                std::fs::copy(root.join("..").join("sources").join(name), src.join(name))
                    .map(|_| ())
            },
        )?;
    }
    bench
        .prefill_tasks("image.thumbnail", n, |seq| {
            serde_json::to_vec(&json!({
                "source": { "key": format!("sources/{}", sources[seq % sources.len()]) },
                "outputs": [{ "width": BOX, "height": BOX, "quality": QUALITY }],
            }))
            .unwrap_or_default()
        })
        .await?;
    let exe = sibling_exe("image-worker", "image-worker")?;
    let mut cmd = Command::new(&exe);
    for (key, _) in std::env::vars() {
        if key.starts_with("WARREN_") || key == "RUST_LOG" || key.starts_with("OTEL_") {
            cmd.env_remove(key);
        }
    }
    let started = Instant::now();
    let mut child = cmd
        .env("WARREN_CONFIG", "/nonexistent/warren.toml")
        .env("WARREN_BROKER__URL", &bench.url)
        .env("WARREN_BROKER__NAMESPACE", bench.namespace())
        .env("WARREN_IMAGE__STORE", "local")
        .env("WARREN_IMAGE__LOCAL_ROOT", root)
        .env("WARREN_OPS__ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("could not start {}", exe.display()))?;
    let pid = child.id().context("the image worker exited at once")?;
    let run = wait_outputs(
        &mut child,
        pid,
        &root.join("thumbnails"),
        n,
        started,
        budget(n),
    )
    .await;
    let peak = status_kib(pid, "VmHWM").unwrap_or(0);
    stop(&mut child, pid).await?;
    let mut run = run?;
    run.peak_rss_kib = run.peak_rss_kib.max(peak);
    let left = bench.depth(IMAGE_STEM).await?;
    if left != 0 {
        bench.purge(IMAGE_STEM).await?;
        bail!("{left} image tasks were still queued after the last thumbnail");
    }
    Ok(run)
}

/// Celery: the seed's `process_image` over a queue filled with `n` tasks.
async fn celery_once(
    bench: &BenchBroker,
    out: &Path,
    sources: &Path,
    names: &[String],
    n: usize,
) -> anyhow::Result<Run> {
    std::fs::create_dir_all(out)?;
    let queue = format!("{}.celery-image", bench.namespace());
    let command = |program: PathBuf| {
        let mut cmd = Command::new(program);
        cmd.current_dir(bench_dir().join("peers"))
            .env("BENCH_AMQP_URL", &bench.url)
            .env("BENCH_QUEUE", &queue)
            .env("BENCH_OUT", out)
            .env("BENCH_SIZES", format!("[[{BOX}, {BOX}]]"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    let paths: Vec<String> = names
        .iter()
        .map(|n| sources.join(n).display().to_string())
        .collect();
    let published = command(venv_bin("python")?)
        .args(["celery_image.py", "publish", &n.to_string()])
        .args(&paths)
        .stdout(Stdio::null())
        .output()
        .await
        .context("could not run bench/peers/celery_image.py")?;
    if !published.status.success() {
        bail!(
            "publishing Celery image tasks failed: {}",
            String::from_utf8_lossy(&published.stderr)
        );
    }
    let started = Instant::now();
    let mut worker = command(venv_bin("celery")?)
        .args(["-A", "celery_image", "worker", "--pool", "prefork"])
        .args(["--concurrency", &CELERY_PROCESSES.to_string()])
        .args([
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ])
        .args(["--loglevel", "WARNING", "-Q", &queue])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("could not start the Celery worker")?;
    let pid = worker.id().context("the Celery worker exited at once")?;
    let run = wait_outputs(&mut worker, pid, out, n, started, budget(n)).await;
    let stopped = stop(&mut worker, pid).await;
    bench
        .delete_peer_objects(std::slice::from_ref(&queue), std::slice::from_ref(&queue))
        .await?;
    let run = run?;
    stopped?;
    Ok(run)
}

pub async fn run(cfg: &Config, bench: &BenchBroker, report: &mut Report) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("{}-thumbnails", bench.namespace()));
    let result = measure(cfg, bench, report, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(
    cfg: &Config,
    bench: &BenchBroker,
    report: &mut Report,
    dir: &Path,
) -> anyhow::Result<()> {
    let n = cfg.thumbnails_n;
    let sources_dir = dir.join("sources");
    let names = make_sources(&sources_dir, cfg.smoke)?;
    let celery = cfg.peers.has(Peer::Celery);
    let mut warren: Vec<Run> = Vec::new();
    let mut pillow: Vec<Run> = Vec::new();
    for r in 0..cfg.rounds {
        // Alternate which side goes first.
        let order: &[bool] = if r % 2 == 0 {
            &[true, false]
        } else {
            &[false, true]
        };
        for &is_warren in order {
            if is_warren {
                let run = warren_once(bench, &dir.join(format!("warren-{r}")), &names, n).await?;
                report.note(format!(
                    "thumbnails round {}/{}: Warren {n} tasks in {:.2} s",
                    r + 1,
                    cfg.rounds,
                    run.seconds
                ));
                warren.push(run);
            } else if celery {
                let out = dir.join(format!("celery-{r}"));
                let run = celery_once(bench, &out, &sources_dir, &names, n).await?;
                report.note(format!(
                    "thumbnails round {}/{}: Celery + Pillow {n} tasks in {:.2} s",
                    r + 1,
                    cfg.rounds,
                    run.seconds
                ));
                pillow.push(run);
            }
        }
    }
    let seconds = |runs: &[Run]| median(&runs.iter().map(|r| r.seconds).collect::<Vec<_>>());
    let peak = |runs: &[Run]| runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
    let w = seconds(&warren);
    let mut section = serde_json::Map::new();
    section.insert(
        "what".to_owned(),
        json!(format!(
            "{n} image.thumbnail tasks ({BOX}x{BOX} contain, JPEG quality {QUALITY}) from worker start to the last thumbnail written; sources {} in turn",
            names.join(", ")
        )),
    );
    section.insert(
        "warren".to_owned(),
        json!({
            "worker": format!("image-worker, {} build, defaults, local store", if cfg!(debug_assertions) { "debug" } else { "release" }),
            "seconds": warren.iter().map(|r| round(r.seconds, 3)).collect::<Vec<_>>(),
            "median_seconds": round(w, 3),
            "tasks_per_s": round(n as f64 / w, 1),
            "peak_rss_kib": peak(&warren),
        }),
    );
    if celery {
        let p = seconds(&pillow);
        let r = ratio(p, w);
        section.insert(
            "celery_pillow".to_owned(),
            json!({
                "worker": format!("celery worker --pool prefork --concurrency {CELERY_PROCESSES}, acks_late, process_image with Pillow (bench/peers/celery_image.py)"),
                "seconds": pillow.iter().map(|r| round(r.seconds, 3)).collect::<Vec<_>>(),
                "median_seconds": round(p, 3),
                "tasks_per_s": round(n as f64 / p, 1),
                "peak_rss_kib": peak(&pillow),
            }),
        );
        section.insert(
            "ratio_warren_to_celery_pillow".to_owned(),
            json!(round(r, 2)),
        );
        report.row(
            "thumbnails",
            format!(
                "{n} tasks, worker start to last thumbnail, s (median of {})",
                cfg.rounds
            ),
            format!("{w:.2}"),
            format!("{p:.2} (Celery + Pillow)"),
            Some(r),
            "",
            None,
        );
    } else {
        report.row(
            "thumbnails",
            format!(
                "{n} tasks, worker start to last thumbnail, s (median of {})",
                cfg.rounds
            ),
            format!("{w:.2}"),
            "-".to_owned(),
            None,
            "",
            None,
        );
    }
    report
        .sections
        .insert("thumbnails".to_owned(), section.into());
    Ok(())
}
