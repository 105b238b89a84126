//! Thumbnails per second, Warren against Pillow, on one core.
//!
//! `cargo bench -p image-worker --bench thumbnails` generates six images
//! (6000x4000, 4000x3000 and 1920x1080, each as JPEG and as PNG), then
//! makes a 500x500 `contain` JPEG (quality 85) of each, over and over, with
//! the worker's own pipeline (`image_worker::render`: probe, scaled decode,
//! resize, encode, from bytes in memory), and with Pillow's
//! `Image.thumbnail` plus a JPEG save when `python3` has Pillow. Both run
//! pinned to CPU 0 (`taskset`), in three alternating rounds of at least a
//! second per image. It prints, per image, the median CPU milliseconds of
//! each (what a thumbnail costs a core, however loaded the machine), their
//! ratio, the same ratio on the clock, and the peak RSS of a fresh process
//! of each rendering that image once (`VmHWM`); then the thumbnails per
//! CPU-second over the set. Arguments that are not flags keep only the
//! images whose label contains one of them (`-- --bench jpeg`).
//!
//! Without `--bench` (that is, under `cargo test`) it runs a smoke pass on
//! tiny images, once each, without Pillow and without timing claims, so
//! the benchmark keeps compiling and working.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use image_worker::{Fit, Limits, OutputFormat, OutputSpec, Rgb, StoreKey, render};

const FULL_SIZES: [(u32, u32); 3] = [(6000, 4000), (4000, 3000), (1920, 1080)];
const SMOKE_SIZES: [(u32, u32); 3] = [(96, 64), (64, 48), (40, 22)];
const BOX: (u32, u32) = (500, 500);
const QUALITY: u8 = 85;
const PINNED: &str = "WARREN_BENCH_PINNED";
/// Alternating rounds of at least a second each, per image and side.
const ROUNDS: usize = 3;

/// Pillow's side: the same files, the same box and quality. `thumbnail`
/// uses `draft()` on JPEGs, i.e. libjpeg-turbo's own DCT scaling.
const PILLOW: &str = r#"
import io, json, sys, time
from PIL import Image

def once(data):
    im = Image.open(io.BytesIO(data))
    im.thumbnail((500, 500))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=85)
    return im.size, out.tell()

if sys.argv[1] == "rss":
    # VmHWM, not ru_maxrss: the latter survives exec and would report the
    # benchmark process that spawned this one. "idle": the interpreter
    # with Pillow loaded, and no image.
    if sys.argv[2] != "idle":
        once(open(sys.argv[2], "rb").read())
    status = open("/proc/self/status").read()
    print(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM:")))
    sys.exit(0)

min_time, min_iters = float(sys.argv[1]), int(sys.argv[2])
for path in sys.argv[3:]:
    data = open(path, "rb").read()
    once(data)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        size, nbytes = once(data)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and n >= min_iters:
            break
    print(json.dumps({"path": path, "seconds": elapsed / n,
                      "cpu_seconds": (time.process_time() - cpu) / n, "iterations": n,
                      "width": size[0], "height": size[1], "bytes": nbytes}))
"#;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--peak-rss") {
        let path = args.get(i + 1).context("--peak-rss needs a file")?;
        return peak_rss_child(Path::new(path));
    }
    let full = args.iter().any(|a| a == "--bench");
    let filters: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    if full && std::env::var_os(PINNED).is_none() {
        if let Some(status) = pin_and_rerun(&args)? {
            std::process::exit(status);
        }
        println!("taskset is not available: running unpinned.");
    }
    run(full, &filters)
}

/// Re-runs this benchmark under `taskset -c 0`; `None` if taskset is
/// missing.
fn pin_and_rerun(args: &[String]) -> anyhow::Result<Option<i32>> {
    let exe = std::env::current_exe()?;
    let status = match Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg(&exe)
        .args(args)
        .env(PINNED, "1")
        .status()
    {
        Ok(status) => status,
        Err(_) => return Ok(None),
    };
    Ok(Some(status.code().unwrap_or(1)))
}

struct Sample {
    label: String,
    path: PathBuf,
    bytes: Vec<u8>,
}

fn run(full: bool, filters: &[String]) -> anyhow::Result<()> {
    let sizes = if full { FULL_SIZES } else { SMOKE_SIZES };
    let (min_time, min_iters, rounds) = if full {
        (Duration::from_secs(1), 5, ROUNDS)
    } else {
        (Duration::ZERO, 1, 1)
    };
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let samples: Vec<Sample> = generate(dir.path(), &sizes)?
        .into_iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.label.contains(f.as_str())))
        .collect();
    println!(
        "Warren thumbnail benchmark: {}x{} contain, JPEG quality {QUALITY}, {}{}",
        BOX.0,
        BOX.1,
        if full {
            "timed, median of alternating rounds"
        } else {
            "smoke pass (tiny images, untimed)"
        },
        cpu_note(),
    );
    println!(
        "Generated {} images in {:.1}s.",
        samples.len(),
        started.elapsed().as_secs_f64()
    );

    let output = OutputSpec::new(
        BOX.0,
        BOX.1,
        Fit::Contain,
        OutputFormat::Jpeg,
        QUALITY,
        StoreKey::parse("bench", "bench/thumb.jpg").map_err(|e| anyhow::anyhow!("{e}"))?,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let outputs = [output];

    // Warren and Pillow alternate, round by round on each image, and each
    // figure is the median of its rounds, so a burst of load on the
    // machine weighs on both alike and one slow round does not count.
    let pillow_version = if full { pillow_version() } else { None };
    let mut warren = Vec::new();
    let mut pillow_seconds = Vec::new();
    for sample in &samples {
        let once = || {
            render(&sample.bytes, &outputs, Rgb([255, 255, 255]), limits())
                .map_err(|e| anyhow::anyhow!("{}: {e}", sample.label))
        };
        let first = once()?;
        let thumb = first.outputs.first().context("no output")?;
        // `contain` fits the long side to the box, scaling up if need be.
        if thumb.width.max(thumb.height) != BOX.0 {
            bail!(
                "{}: made {}x{}, expected a 500-pixel long side",
                sample.label,
                thumb.width,
                thumb.height
            );
        }
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ours.push(time_it(min_time, min_iters, || once().map(|_| ()))?);
            if pillow_version.is_some() {
                theirs.push(time_pillow(&sample.path, min_time, min_iters)?);
            }
        }
        warren.push((medians(&ours), first));
        pillow_seconds.push(medians(&theirs));
    }
    let pillow = pillow_version.map(|_| pillow_seconds);

    // Peak RSS: a fresh process of each side renders the image once.
    let mut rss = Vec::new();
    for sample in &samples {
        let ours = peak_rss_of_child(&sample.path)?;
        let theirs = pillow
            .as_ref()
            .and_then(|_| pillow_peak_rss(sample.path.to_str().unwrap_or("")));
        rss.push((ours, theirs));
    }

    println!();
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>7} {:>7} {:>11} {:>11}",
        "source",
        "decoded at",
        "Warren ms",
        "Pillow ms",
        "ratio",
        "wall",
        "Warren RSS",
        "Pillow RSS"
    );
    let mib = |kib: u64| format!("{:.0} MiB", kib as f64 / 1024.0);
    for (i, sample) in samples.iter().enumerate() {
        let (ours, rendered) = &warren[i];
        let theirs = pillow.as_ref().map(|p: &Vec<Timing>| p[i]);
        let ratio = |f: fn(&Timing) -> f64| {
            theirs.map_or("-".to_owned(), |t| format!("{:.2}x", f(&t) / f(ours)))
        };
        println!(
            "{:<26} {:>10} {:>10.1} {:>10} {:>7} {:>7} {:>11} {:>11}",
            format!(
                "{} ({:.1} MB)",
                sample.label,
                sample.bytes.len() as f64 / 1e6
            ),
            format!(
                "{}x{}",
                rendered.source.decoded_width, rendered.source.decoded_height
            ),
            ours.cpu * 1000.0,
            theirs.map_or("-".to_owned(), |t| format!("{:.1}", t.cpu * 1000.0)),
            ratio(|t| t.cpu),
            ratio(|t| t.wall),
            mib(rss[i].0),
            rss[i].1.map_or("-".to_owned(), mib),
        );
    }
    println!(
        "ms: CPU time per thumbnail (the median of the rounds), which is what it costs a core \
         whatever else runs on the machine; ratio: Pillow's over Warren's; wall: the same ratio \
         on the clock."
    );
    if let Some(idle) = pillow.as_ref().and_then(|_| pillow_peak_rss("idle")) {
        println!(
            "RSS: the peak (VmHWM) of a fresh process rendering the image once. Pillow's includes \
             python3 with Pillow loaded, {} before any image; Warren's includes the source file.",
            mib(idle)
        );
    }
    let warren_total: f64 = warren.iter().map(|(t, _)| t.cpu).sum();
    let warren_rate = samples.len() as f64 / warren_total;
    println!();
    match &pillow {
        Some(p) => {
            let pillow_rate = samples.len() as f64 / p.iter().map(|t| t.cpu).sum::<f64>();
            println!(
                "Thumbnails per CPU-second, over the set: Warren {warren_rate:.1}, Pillow {pillow_rate:.1}, ratio {:.2}x",
                warren_rate / pillow_rate
            );
        }
        None if full => println!(
            "Thumbnails per CPU-second, over the set: Warren {warren_rate:.1} (no Pillow: `python3 -m pip install pillow` to compare)"
        ),
        None => println!("Smoke pass: every image rendered."),
    }

    Ok(())
}

fn limits() -> Limits {
    Limits {
        max_width: 20_000,
        max_height: 20_000,
        max_pixels: 60_000_000,
        max_alloc_bytes: 512 * 1024 * 1024,
    }
}

/// The middle value (0 for none).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Seconds per call of one side: on the clock, and on the CPU.
#[derive(Debug, Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: f64,
}

/// Medians of each, over rounds.
fn medians(rounds: &[Timing]) -> Timing {
    Timing {
        wall: median(&rounds.iter().map(|t| t.wall).collect::<Vec<_>>()),
        cpu: median(&rounds.iter().map(|t| t.cpu).collect::<Vec<_>>()),
    }
}

/// CPU time of this process (all its threads), in seconds: what a
/// thumbnail costs a core, whatever else the machine runs meanwhile.
fn process_cpu() -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("no schedstat")?;
    }
    Ok(ns as f64 / 1e9)
}

/// Seconds per call of `f`, over at least `min_time` and `min_iters`.
fn time_it(
    min_time: Duration,
    min_iters: u32,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Timing> {
    let (start, cpu) = (Instant::now(), process_cpu()?);
    let mut n = 0;
    loop {
        f()?;
        n += 1;
        let elapsed = start.elapsed();
        if elapsed >= min_time && n >= min_iters {
            return Ok(Timing {
                wall: (elapsed / n).as_secs_f64(),
                cpu: (process_cpu()? - cpu) / f64::from(n),
            });
        }
    }
}

/// A deterministic, photo-like image: smooth gradients and waves, plus a
/// little per-pixel noise (sensor grain), so the files compress like
/// photographs rather than like flat colour.
fn photo(width: u32, height: u32) -> Vec<u8> {
    let wave = |n: u32, period: f32, amp: f32| -> Vec<f32> {
        (0..n).map(|i| (i as f32 / period).sin() * amp).collect()
    };
    let (wx, wy) = (wave(width, 37.0, 40.0), wave(height, 53.0, 40.0));
    let (gx, gy) = (wave(width, 900.0, 60.0), wave(height, 700.0, 60.0));
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height as usize {
        for x in 0..width as usize {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state & 15) as f32 - 7.5;
            let base = 128.0 + gx[x] + gy[y];
            let clamp = |v: f32| v.clamp(0.0, 255.0) as u8;
            data.push(clamp(base + wx[x] + noise));
            data.push(clamp(base + wy[y] - noise));
            data.push(clamp(base - wx[x] * 0.5 + wy[y] * 0.5 + noise * 0.5));
        }
    }
    data
}

fn generate(dir: &Path, sizes: &[(u32, u32)]) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for &(w, h) in sizes {
        let pixels = photo(w, h);
        for format in ["jpeg", "png"] {
            let mut bytes = Vec::new();
            match format {
                "jpeg" => JpegEncoder::new_with_quality(&mut bytes, 90).write_image(
                    &pixels,
                    w,
                    h,
                    ExtendedColorType::Rgb8,
                )?,
                _ => PngEncoder::new(&mut bytes).write_image(
                    &pixels,
                    w,
                    h,
                    ExtendedColorType::Rgb8,
                )?,
            }
            let path = dir.join(format!("{w}x{h}.{format}"));
            std::fs::write(&path, &bytes)?;
            samples.push(Sample {
                label: format!("{w}x{h} {format}"),
                path,
                bytes,
            });
        }
    }
    Ok(samples)
}

/// Pillow's version, or `None` (and a note) without python3 or Pillow.
fn pillow_version() -> Option<String> {
    let probe = Command::new("python3")
        .args(["-c", "import PIL; print(PIL.__version__)"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            println!("Pillow {version} found; timing it on the same files.");
            Some(version)
        }
        _ => {
            println!(
                "Pillow is not available (python3 -m pip install pillow); skipping the comparison."
            );
            None
        }
    }
}

/// Pillow's seconds per thumbnail of one file.
fn time_pillow(path: &Path, min_time: Duration, min_iters: u32) -> anyhow::Result<Timing> {
    let out = Command::new("python3")
        .args(["-c", PILLOW])
        .arg(min_time.as_secs_f64().to_string())
        .arg(min_iters.to_string())
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "the Pillow benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())?;
    Ok(Timing {
        wall: v["seconds"].as_f64().context("no seconds from Pillow")?,
        cpu: v["cpu_seconds"]
            .as_f64()
            .context("no CPU seconds from Pillow")?,
    })
}

/// In a fresh process: read the file, render it once, print VmHWM (KiB).
fn peak_rss_child(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)?;
    let output = OutputSpec::new(
        BOX.0,
        BOX.1,
        Fit::Contain,
        OutputFormat::Jpeg,
        QUALITY,
        StoreKey::parse("bench", "bench/thumb.jpg").map_err(|e| anyhow::anyhow!("{e}"))?,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    render(&bytes, &[output], Rgb([255, 255, 255]), limits())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmHWM in /proc/self/status")?;
    println!("{hwm}");
    Ok(())
}

fn peak_rss_of_child(path: &Path) -> anyhow::Result<u64> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--peak-rss")
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "the peak-RSS run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Pillow's peak RSS rendering `path` once, or with `"idle"` of the
/// interpreter with Pillow loaded.
fn pillow_peak_rss(path: &str) -> Option<u64> {
    let out = Command::new("python3")
        .args(["-c", PILLOW, "rss"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn cpu_note() -> String {
    let allowed = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned());
    format!(", CPUs allowed: {allowed}")
}
