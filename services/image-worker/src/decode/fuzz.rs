//! Fuzzing the image header probe and the decoders behind it with
//! proptest (docs/development.md, "Fuzzing"): arbitrary bytes, and small
//! valid JPEG (baseline and progressive), PNG, GIF and WebP files with
//! bytes overwritten and their tails cut, go through [`Probe::new`] and
//! [`Probe::decode`] as a task's source does. Nothing may panic; a probe
//! that passes is within the limits; decoded pixels fill exactly their
//! buffer; every refusal is permanent (bad input is never retried).
//!
//! Cases per property: `PROPTEST_CASES` (256 by default). A failure is
//! shrunk and saved under `proptest-regressions/`, committed and replayed
//! first on every run.

// A failing unwrap is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use image::ImageEncoder;
use proptest::prelude::*;

use super::{Probe, SourceFormat};
use crate::spec::Limits;

/// Small limits: a mutation that declares a huge size is refused on the
/// header, and whatever passes decodes in a few milliseconds.
const LIMITS: Limits = Limits {
    max_width: 1024,
    max_height: 1024,
    max_pixels: 262_144,
    max_alloc_bytes: 16 << 20,
};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// One small valid file per format (and JPEG flavour), made once.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let (w, h) = (24u16, 17u16);
        let rgb = pattern(usize::from(w) * usize::from(h) * 3);
        let mut baseline = Vec::new();
        jpeg_encoder::Encoder::new(&mut baseline, 85)
            .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let mut progressive = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut progressive, 85);
        encoder.set_progressive(true);
        encoder
            .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let (w, h) = (u32::from(w), u32::from(h));
        let rgba = pattern((w * h * 4) as usize);
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&rgba, w, h, image::ExtendedColorType::Rgba8)
            .unwrap();
        let mut gif = Vec::new();
        image::codecs::gif::GifEncoder::new(&mut gif)
            .encode(&rgba, w, h, image::ExtendedColorType::Rgba8)
            .unwrap();
        let mut webp = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
            .write_image(&rgba, w, h, image::ExtendedColorType::Rgba8)
            .unwrap();
        vec![baseline, progressive, png, gif, webp]
    })
}

/// A seed with some bytes overwritten (more often in the header, where
/// the sizes and markers are) and maybe its tail cut off.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        prop_oneof![3 => 0usize..64, 1 => any::<usize>()],
        any::<u8>(),
    );
    (
        0..seeds().len(),
        proptest::collection::vec(edit, 0..6),
        proptest::option::weighted(0.3, any::<prop::sample::Index>()),
    )
        .prop_map(|(seed, edits, cut)| {
            let mut bytes = seeds()[seed].clone();
            for (at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            bytes
        })
}

/// Probes and decodes `bytes` as a source; checks the promises.
fn probe_and_decode(bytes: &[u8], min: (u32, u32)) -> Result<(), TestCaseError> {
    let probe = match Probe::new(bytes, LIMITS) {
        Ok(probe) => probe,
        Err(e) => {
            prop_assert!(e.is_permanent(), "a bad source is retried: {e}");
            return Ok(());
        }
    };
    let (width, height) = probe.dimensions();
    prop_assert_eq!(
        LIMITS.exceeded_by(width, height),
        None,
        "a probe over the limits passed"
    );
    prop_assert_eq!(Some(probe.format()), SourceFormat::sniff(bytes));
    match probe.decode(min.0, min.1) {
        Ok(pixels) => {
            prop_assert!(pixels.width >= 1 && pixels.height >= 1);
            prop_assert!(pixels.width <= width && pixels.height <= height);
            prop_assert_eq!(
                pixels.data.len(),
                pixels.width as usize * pixels.height as usize * pixels.layout.bytes_per_pixel()
            );
        }
        Err(e) => prop_assert!(e.is_permanent(), "a bad source is retried: {e}"),
    }
    Ok(())
}

proptest! {
    #[test]
    fn the_seeds_decode(seed in 0..5usize) {
        let probe = Probe::new(&seeds()[seed], LIMITS);
        prop_assert!(probe.is_ok(), "seed {} does not probe", seed);
        probe_and_decode(&seeds()[seed], (8, 8))?;
    }

    #[test]
    fn any_bytes_probe_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        min in (1u32..64, 1u32..64),
    ) {
        probe_and_decode(&bytes, min)?;
    }

    #[test]
    fn any_bytes_behind_a_magic_number_probe_without_panicking(
        magic in prop::sample::select(vec![
            &b"\xFF\xD8\xFF"[..],
            &b"\x89PNG\r\n\x1a\n"[..],
            &b"GIF89a"[..],
            &b"RIFF\x10\x00\x00\x00WEBPVP8 "[..],
        ]),
        tail in proptest::collection::vec(any::<u8>(), 0..512),
        min in (1u32..64, 1u32..64),
    ) {
        let bytes = [magic, &tail].concat();
        probe_and_decode(&bytes, min)?;
    }

    #[test]
    fn a_damaged_image_probes_and_decodes_or_is_refused_for_good(
        bytes in mutated(),
        min in (1u32..32, 1u32..32),
    ) {
        probe_and_decode(&bytes, min)?;
    }
}
