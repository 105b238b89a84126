//! Encoding a resized image: JPEG with `jpeg-encoder` (SIMD, 4:2:0 like
//! libjpeg's default, about three times faster than the `image` crate's
//! encoder on a thumbnail), PNG with the `image` crate, lossy WebP with
//! libwebp (the `image` crate's WebP encoder is lossless only, which makes
//! thumbnails several times larger).
//!
//! JPEG has no alpha channel: transparent pixels are composited over a
//! background colour first ([`flatten`]), so a PNG logo with a transparent
//! background becomes a logo on white (or the colour asked for), not on the
//! black that dropping the alpha channel would leave.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use warren::TaskError;

use crate::decode::{Layout, Pixels};
use crate::error::{self, PROCESSING_FAILED};
use crate::spec::{OutputFormat, Rgb};

/// Composites an RGBA image over `background`; other layouts pass through.
pub fn flatten(pixels: Pixels, background: Rgb) -> Pixels {
    if pixels.layout != Layout::Rgba8 {
        return pixels;
    }
    let [br, bg, bb] = background.0.map(u32::from);
    let mut rgb = Vec::with_capacity(pixels.data.len() / 4 * 3);
    for px in pixels.data.chunks_exact(4) {
        let a = u32::from(px[3]);
        let inv = 255 - a;
        let mix = |c: u8, b: u32| ((u32::from(c) * a + b * inv + 127) / 255) as u8;
        rgb.extend_from_slice(&[mix(px[0], br), mix(px[1], bg), mix(px[2], bb)]);
    }
    Pixels {
        width: pixels.width,
        height: pixels.height,
        layout: Layout::Rgb8,
        data: rgb,
    }
}

/// Encodes `pixels` as `format`. `quality` (1-100) applies to JPEG and
/// WebP; PNG is lossless.
pub fn encode(pixels: &Pixels, format: OutputFormat, quality: u8) -> Result<Vec<u8>, TaskError> {
    let failed = |e: &dyn std::fmt::Display| {
        error::permanent(
            PROCESSING_FAILED,
            format!("encoding {} failed: {e}", format.as_str()),
        )
    };
    let color = match pixels.layout {
        Layout::L8 => ExtendedColorType::L8,
        Layout::Rgb8 => ExtendedColorType::Rgb8,
        Layout::Rgba8 => ExtendedColorType::Rgba8,
    };
    let mut out = Vec::new();
    match format {
        OutputFormat::Jpeg => {
            let color = match pixels.layout {
                Layout::L8 => jpeg_encoder::ColorType::Luma,
                Layout::Rgb8 => jpeg_encoder::ColorType::Rgb,
                // `flatten` ran first, but encoding RGBA is correct anyway:
                // the encoder drops the alpha channel.
                Layout::Rgba8 => jpeg_encoder::ColorType::Rgba,
            };
            let side = |v: u32| u16::try_from(v).map_err(|_| failed(&"too large for JPEG"));
            jpeg_encoder::Encoder::new(&mut out, quality)
                .encode(
                    &pixels.data,
                    side(pixels.width)?,
                    side(pixels.height)?,
                    color,
                )
                .map_err(|e| failed(&e))?;
        }
        OutputFormat::Png => {
            PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive)
                .write_image(&pixels.data, pixels.width, pixels.height, color)
                .map_err(|e| failed(&e))?;
        }
        OutputFormat::Webp => {
            let (layout, data) = match pixels.layout {
                Layout::Rgb8 => (
                    webp::PixelLayout::Rgb,
                    std::borrow::Cow::Borrowed(&pixels.data),
                ),
                Layout::Rgba8 => (
                    webp::PixelLayout::Rgba,
                    std::borrow::Cow::Borrowed(&pixels.data),
                ),
                // libwebp takes RGB(A) only.
                Layout::L8 => (
                    webp::PixelLayout::Rgb,
                    std::borrow::Cow::Owned(pixels.data.iter().flat_map(|&l| [l, l, l]).collect()),
                ),
            };
            let memory = webp::Encoder::new(&data, layout, pixels.width, pixels.height)
                .encode_simple(false, f32::from(quality))
                .map_err(|e| failed(&format!("{e:?}")))?;
            out.extend_from_slice(&memory);
        }
    }
    Ok(out)
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn transparent_pixels_take_the_background_colour() {
        let px = Pixels {
            width: 3,
            height: 1,
            layout: Layout::Rgba8,
            data: vec![0, 0, 0, 0, 255, 0, 0, 255, 0, 0, 255, 128],
        };
        let flat = flatten(px, Rgb([0, 255, 0]));
        assert_eq!(flat.layout, Layout::Rgb8);
        assert_eq!(flat.data, vec![0, 255, 0, 255, 0, 0, 0, 127, 128]);
    }

    #[test]
    fn every_format_encodes_and_decodes_back() {
        for layout in [Layout::L8, Layout::Rgb8, Layout::Rgba8] {
            let px = Pixels {
                width: 8,
                height: 4,
                layout,
                data: vec![200; 32 * layout.bytes_per_pixel()],
            };
            for format in [OutputFormat::Jpeg, OutputFormat::Png, OutputFormat::Webp] {
                let px = if format.has_alpha() {
                    px.clone()
                } else {
                    flatten(px.clone(), Rgb([0, 0, 0]))
                };
                let bytes = encode(&px, format, 80).unwrap();
                let back = image::load_from_memory(&bytes).unwrap();
                assert_eq!(
                    (back.width(), back.height()),
                    (8, 4),
                    "{layout:?} {format:?}"
                );
            }
        }
    }
}
