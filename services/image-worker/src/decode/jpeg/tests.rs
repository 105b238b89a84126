//! The scaled decoder against `jpeg-decoder` (the path it replaces), and
//! against hostile bytes.
//!
//! The fixtures under `fixtures/jpeg/` come from libjpeg-turbo (Pillow
//! 13), for what jpeg-encoder does not write: a progressive file with
//! successive approximation of the DC scans, optimised Huffman tables, and
//! a progressive greyscale file. They were made with
//! `Image.save(path, "JPEG", quality=88, progressive=True, subsampling=2)`
//! (and `quality=75, optimize=True, subsampling=1`; `.convert("L")`,
//! `progressive=True`) from a 203x131 pattern of sines.

// A failing unwrap is how a test reports failure.
#![allow(clippy::unwrap_used)]

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

use super::markers::{Colour, support};
use super::*;
use crate::decode::Probe;
use crate::decode::tests::LIMITS;

const PROGRESSIVE_420: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/jpeg/progressive-420.jpg"
));
const OPTIMIZED_422: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/jpeg/optimized-422.jpg"
));
const PROGRESSIVE_GREY: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/jpeg/progressive-grey.jpg"
));

/// A photo-like picture: gradients, waves and some grain.
fn photo(width: u16, height: u16, channels: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(usize::from(width) * usize::from(height) * channels);
    for y in 0..usize::from(height) {
        for x in 0..usize::from(width) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let grain = (state % 13) as f32 - 6.0;
            let base = 110.0 + (x as f32 / 17.0).sin() * 60.0 + (y as f32 / 29.0).cos() * 40.0;
            for c in 0..channels {
                let v = base + grain + c as f32 * 25.0 - (x * c) as f32 * 0.05;
                out.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

struct Options {
    sampling: SamplingFactor,
    progressive: bool,
    restart: u16,
    grey: bool,
}

const BASELINE: Options = Options {
    sampling: SamplingFactor::R_4_4_4,
    progressive: false,
    restart: 0,
    grey: false,
};

fn encode(width: u16, height: u16, o: Options) -> Vec<u8> {
    let channels = if o.grey { 1 } else { 3 };
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out, 85);
    e.set_sampling_factor(o.sampling);
    e.set_progressive(o.progressive);
    e.set_restart_interval(o.restart);
    let color = if o.grey {
        ColorType::Luma
    } else {
        ColorType::Rgb
    };
    e.encode(&photo(width, height, channels), width, height, color)
        .unwrap();
    out
}

/// The same decode through `jpeg-decoder`.
fn reference(bytes: &[u8], side: u32) -> Pixels {
    let probe = JpegProbe::new(bytes, LIMITS).unwrap().unwrap();
    let (w, h) = (
        (probe.width * side).div_ceil(8),
        (probe.height * side).div_ceil(8),
    );
    probe.with_jpeg_decoder(w, h).unwrap()
}

/// Through the scaled decoder, which must take it.
fn scaled(bytes: &[u8], side: usize) -> Pixels {
    let support = support(bytes).expect("the scaled decoder handles it");
    scaled::decode(bytes, support, side, &LIMITS).unwrap()
}

/// Peak signal-to-noise ratio in dB between two decodes of one size.
fn psnr(a: &Pixels, b: &Pixels) -> f64 {
    assert_eq!((a.width, a.height, a.layout), (b.width, b.height, b.layout));
    let mse = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.data.len() as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// Checks the scaled decode of `bytes` at `side`/8: within `min_db` of
/// `jpeg-decoder`'s, and at least as close as it is to the truth (the
/// full-size decode, box-averaged).
fn assert_close(what: &str, bytes: &[u8], side: usize, min_db: f64) {
    let ours = scaled(bytes, side);
    let theirs = reference(bytes, side as u32);
    let truth = truth(bytes, side as u32);
    let (to_theirs, ours_to_truth, theirs_to_truth) = (
        psnr(&ours, &theirs),
        psnr(&ours, &truth),
        psnr(&theirs, &truth),
    );
    assert!(
        to_theirs > min_db && ours_to_truth > theirs_to_truth - 0.5,
        "{what} at {side}/8: {to_theirs:.1} dB from jpeg-decoder; from the truth {ours_to_truth:.1} \
         dB, jpeg-decoder {theirs_to_truth:.1} dB"
    );
}

#[test]
fn every_sampling_and_scale_matches_jpeg_decoder() {
    let samplings = [
        SamplingFactor::R_4_4_4,
        SamplingFactor::R_4_2_2,
        SamplingFactor::R_4_2_0,
        SamplingFactor::R_4_4_0,
        SamplingFactor::R_4_1_1,
    ];
    for sampling in samplings {
        // Sizes that are no multiple of the MCU, to test the edges.
        let bytes = encode(
            333,
            207,
            Options {
                sampling,
                ..BASELINE
            },
        );
        for side in [1, 2, 4] {
            assert_close(&format!("{sampling:?}"), &bytes, side, 44.0);
        }
    }
}

#[test]
fn greyscale_and_libjpeg_files_match_jpeg_decoder() {
    let grey = encode(
        150,
        97,
        Options {
            grey: true,
            ..BASELINE
        },
    );
    assert_eq!(support(&grey).unwrap().colour, Colour::Grey);
    assert_eq!(scaled(&grey, 1).layout, Layout::L8);
    for side in [1, 2, 4] {
        assert_close("grey", &grey, side, 44.0);
    }
    // A pattern of fine stripes, where the reduced IDCTs part most: the
    // scaled decoder stays the closer of the two to the truth.
    for side in [1, 2, 4] {
        assert_close("optimised 4:2:2", OPTIMIZED_422, side, 30.0);
    }
    for (what, fixture) in [("4:2:0", PROGRESSIVE_420), ("grey", PROGRESSIVE_GREY)] {
        assert!(support(fixture).unwrap().progressive);
        assert_close(what, fixture, 1, 40.0);
    }
}

#[test]
fn progressive_dc_scans_and_restart_intervals_give_the_baseline_picture() {
    let plain = encode(400, 300, BASELINE);
    let expected = scaled(&plain, 1);
    for (progressive, restart) in [(true, 0), (false, 7), (true, 3)] {
        let bytes = encode(
            400,
            300,
            Options {
                progressive,
                restart,
                ..BASELINE
            },
        );
        // The same coefficients, however they are laid out.
        let ours = scaled(&bytes, 1);
        assert_eq!(ours.data, expected.data, "{progressive} {restart}");
    }
    let restarted = encode(
        400,
        300,
        Options {
            restart: 5,
            sampling: SamplingFactor::R_4_2_0,
            ..BASELINE
        },
    );
    for side in [1, 2, 4] {
        assert_close("restart intervals", &restarted, side, 44.0);
    }
}

#[test]
fn the_probe_takes_the_scaled_path_where_it_can() {
    let bytes = encode(1600, 1200, BASELINE);
    let probe = JpegProbe::new(&bytes, LIMITS).unwrap().unwrap();
    assert!(probe.support.is_some());
    let px = Probe::new(&bytes, LIMITS)
        .unwrap()
        .decode(200, 150)
        .unwrap();
    assert_eq!((px.width, px.height, px.layout), (200, 150, Layout::Rgb8));
    let px = Probe::new(&bytes, LIMITS)
        .unwrap()
        .decode(201, 150)
        .unwrap();
    assert_eq!((px.width, px.height), (400, 300));
    let px = Probe::new(&bytes, LIMITS)
        .unwrap()
        .decode(1000, 10)
        .unwrap();
    assert_eq!((px.width, px.height), (1600, 1200));
    assert_eq!(jpeg_scaled_size(6000, 4000, 500, 333), (750, 500));
    assert_eq!(jpeg_scaled_size(4000, 3000, 500, 375), (500, 375));
    assert_eq!(jpeg_scaled_size(1920, 1080, 500, 281), (960, 540));
    // Progressive above 1/8 goes through jpeg-decoder, same size.
    let px = Probe::new(PROGRESSIVE_420, LIMITS)
        .unwrap()
        .decode(60, 40)
        .unwrap();
    assert_eq!((px.width, px.height), (102, 66));
    // CMYK is not for the scaled decoder.
    let mut cmyk = Vec::new();
    Encoder::new(&mut cmyk, 80)
        .encode(&[9u8; 16 * 16 * 4], 16, 16, ColorType::Cmyk)
        .unwrap();
    assert_eq!(support(&cmyk), None);
}

/// A small deterministic generator for the corruption tests.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Decodes `bytes` at every scale through the probe: an error is fine, a
/// panic is not (the test fails on it).
fn decode_everywhere(bytes: &[u8]) -> Vec<Result<(), String>> {
    [8, 16, 40, 400]
        .into_iter()
        .map(|min| {
            Probe::new(bytes, LIMITS)
                .and_then(|p| p.decode(min, min))
                .map(|_| ())
                .map_err(|e| e.kind.to_string())
        })
        .collect()
}

#[test]
fn corrupted_files_fail_or_decode_but_never_panic() {
    let files = [
        encode(96, 72, BASELINE),
        encode(
            96,
            72,
            Options {
                sampling: SamplingFactor::R_4_2_0,
                restart: 2,
                ..BASELINE
            },
        ),
        encode(
            96,
            72,
            Options {
                progressive: true,
                ..BASELINE
            },
        ),
        PROGRESSIVE_420.to_vec(),
        OPTIMIZED_422.to_vec(),
    ];
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for file in &files {
        for _ in 0..150 {
            let mut bytes = file.clone();
            match rng.below(4) {
                // Flip a few bytes anywhere, headers included.
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(bytes.len());
                        bytes[at] ^= 1 << rng.below(8);
                    }
                }
                // Overwrite with random bytes.
                1 => {
                    let at = rng.below(bytes.len());
                    for b in bytes.iter_mut().skip(at).take(1 + rng.below(16)) {
                        *b = rng.below(256) as u8;
                    }
                }
                // Markers where they do not belong.
                2 => {
                    let at = 2 + rng.below(bytes.len() - 2);
                    let marker = [0xC4, 0xDA, 0xDB, 0xDD, 0xD0, 0xD9, 0xC0, 0xC2][rng.below(8)];
                    bytes.splice(at..at, [0xFF, marker, 0x00, 0x03 + rng.below(4) as u8]);
                }
                // Cut short.
                _ => bytes.truncate(rng.below(bytes.len())),
            }
            decode_everywhere(&bytes);
        }
    }
}

#[test]
fn truncated_files_are_corrupt_at_every_scale() {
    let files = [
        encode(
            120,
            90,
            Options {
                sampling: SamplingFactor::R_4_2_0,
                ..BASELINE
            },
        ),
        encode(
            120,
            90,
            Options {
                progressive: true,
                ..BASELINE
            },
        ),
        PROGRESSIVE_420.to_vec(),
        PROGRESSIVE_GREY.to_vec(),
    ];
    for file in &files {
        // Cut inside the scans, and just before the end-of-image marker.
        let header = file.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut cuts: Vec<usize> = (1..8)
            .map(|i| header + (file.len() - header) * i / 8)
            .collect();
        cuts.push(file.len() - 2);
        for cut in cuts {
            for result in decode_everywhere(&file[..cut]) {
                assert_eq!(result, Err(CORRUPT_IMAGE.to_owned()), "cut at {cut}");
            }
        }
    }
}

#[test]
fn a_decode_over_the_allocation_limit_is_refused() {
    let bytes = encode(1600, 1200, BASELINE);
    let tight = Limits {
        max_alloc_bytes: 100_000,
        ..LIMITS
    };
    let e = scaled::decode(&bytes, support(&bytes).unwrap(), 1, &tight).unwrap_err();
    assert_eq!(e.kind, IMAGE_TOO_LARGE, "{}", e.message);
    assert!(e.message.contains("image.max_alloc_bytes"), "{}", e.message);
}

/// The full-size decode, box-averaged to `side`/8.
fn truth(bytes: &[u8], side: u32) -> Pixels {
    let full = reference(bytes, 8);
    let g = (8 / side) as usize;
    let ch = full.layout.bytes_per_pixel();
    let (w, h) = (
        (full.width as usize).div_ceil(g),
        (full.height as usize).div_ceil(g),
    );
    let mut data = vec![0u8; w * h * ch];
    for y in 0..h {
        for x in 0..w {
            for c in 0..ch {
                let (mut sum, mut n) = (0u32, 0u32);
                for yy in y * g..((y + 1) * g).min(full.height as usize) {
                    for xx in x * g..((x + 1) * g).min(full.width as usize) {
                        sum += u32::from(full.data[(yy * full.width as usize + xx) * ch + c]);
                        n += 1;
                    }
                }
                data[(y * w + x) * ch + c] = ((sum + n / 2) / n) as u8;
            }
        }
    }
    Pixels {
        width: w as u32,
        height: h as u32,
        layout: full.layout,
        data,
    }
}

#[test]
fn a_file_of_endless_table_definitions_is_refused() {
    let bytes = encode(16, 16, BASELINE);
    let dht = bytes.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
    let len = usize::from(u16::from_be_bytes([bytes[dht + 2], bytes[dht + 3]]));
    let segment = bytes[dht..dht + 2 + len].to_vec();
    let mut hostile = bytes[..dht].to_vec();
    for _ in 0..2000 {
        hostile.extend_from_slice(&segment);
    }
    hostile.extend_from_slice(&bytes[dht..]);
    let e = scaled::decode(&hostile, support(&hostile).unwrap(), 1, &LIMITS).unwrap_err();
    assert_eq!(e.kind, CORRUPT_IMAGE);
    assert!(e.message.contains("Huffman tables"), "{}", e.message);
}
