//! Decoding untrusted bytes, in two steps so nothing large is allocated
//! before the limits are checked.
//!
//! [`Probe::new`] recognises the format by its magic bytes ([`format`]),
//! reads only the header, and refuses an image whose declared size is over
//! the limits ([`limits`]): a 30000x30000 "decompression bomb" costs a few
//! hundred bytes of parsing, and its reason names the size, the pixel
//! count and the setting it breaks, whatever its format. [`Probe::decode`]
//! then decodes at the smallest resolution the outputs need: JPEGs scaled
//! in the DCT domain ([`jpeg`]), wide PNGs reduced while read ([`png`]),
//! anything else in full through the `image` crate ([`generic`]).
//!
//! A truncated file is an error, not a grey-padded picture: decoders that
//! tolerate truncation (as libjpeg does) would otherwise turn a half upload
//! into a "successful" thumbnail.

mod format;
#[cfg(test)]
mod fuzz;
mod generic;
pub mod jpeg;
pub(crate) mod limits;
pub mod png;

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader};
use warren::TaskError;

pub use self::format::SourceFormat;
pub use self::jpeg::jpeg_scaled_size;
pub use self::png::{PNG_STRIP_ROWS, STREAM_REDUCE};
use crate::error::{self, UNSUPPORTED_FORMAT};
use crate::spec::Limits;

/// The pixel layouts the pipeline works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    L8,
    Rgb8,
    Rgba8,
}

impl Layout {
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Layout::L8 => 1,
            Layout::Rgb8 => 3,
            Layout::Rgba8 => 4,
        }
    }
}

/// A decoded image, in its stored orientation.
#[derive(Clone)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pixels")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("layout", &self.layout)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// An image whose header was read and found within the limits.
pub struct Probe<'a> {
    format: SourceFormat,
    width: u32,
    height: u32,
    orientation: Orientation,
    inner: ProbeInner<'a>,
    bytes: &'a [u8],
    limits: Limits,
}

enum ProbeInner<'a> {
    /// Baseline or progressive 8-bit greyscale or YCbCr JPEG: the scaled
    /// paths.
    Jpeg(Box<jpeg::JpegProbe<'a>>),
    /// Everything else, through `image`.
    Generic(Box<dyn ImageDecoder + 'a>),
}

impl<'a> Probe<'a> {
    /// Recognises the format and reads the header: dimensions and EXIF
    /// orientation. Errors are permanent: `unsupported_format` for bytes
    /// that are no JPEG, PNG, WebP or GIF, `image_too_large` over the
    /// limits, `corrupt_image` for a header that does not parse.
    pub fn new(bytes: &'a [u8], limits: Limits) -> Result<Self, TaskError> {
        let format = SourceFormat::sniff(bytes).ok_or_else(|| {
            error::permanent(
                UNSUPPORTED_FORMAT,
                format!(
                    "the source is not a JPEG, PNG, WebP or GIF image (it starts with {})",
                    format::describe_start(bytes)
                ),
            )
        })?;
        if format == SourceFormat::Jpeg
            && let Some(probe) = jpeg::JpegProbe::new(bytes, limits)?
        {
            return Ok(Self {
                format,
                width: probe.width,
                height: probe.height,
                orientation: probe.orientation,
                inner: ProbeInner::Jpeg(Box::new(probe)),
                bytes,
                limits,
            });
        }
        Self::generic(bytes, format, limits)
    }

    fn generic(bytes: &'a [u8], format: SourceFormat, limits: Limits) -> Result<Self, TaskError> {
        // Our own reading of the size first, so the reason is ours too.
        if let Some((width, height)) = limits::declared_size(format, bytes) {
            limits::check_limits(format, width, height, &limits)?;
        }
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format::image_format(format));
        reader.limits(generic::image_limits(&limits));
        let mut decoder = reader.into_decoder().map_err(generic::image_error)?;
        let (width, height) = decoder.dimensions();
        limits::check_limits(format, width, height, &limits)?;
        // A broken EXIF block is no reason to refuse the picture.
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        Ok(Self {
            format,
            width,
            height,
            orientation,
            inner: ProbeInner::Generic(Box::new(decoder)),
            bytes,
            limits,
        })
    }

    pub fn format(&self) -> SourceFormat {
        self.format
    }

    /// Stored width and height (before orientation).
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    pub fn orientation(&self) -> Orientation {
        self.orientation
    }

    /// Decodes at no less than `min_width` x `min_height` (stored
    /// orientation) where the format can decode smaller than full size;
    /// otherwise in full.
    pub fn decode(self, min_width: u32, min_height: u32) -> Result<Pixels, TaskError> {
        match self.inner {
            ProbeInner::Jpeg(probe) => probe.decode(min_width, min_height),
            ProbeInner::Generic(decoder) => {
                if self.format == SourceFormat::Png
                    && min_width.saturating_mul(STREAM_REDUCE) <= self.width
                    && let Some(pixels) =
                        png::decode_png_reduced(self.bytes, min_width.max(1) * 2, &self.limits)?
                {
                    return Ok(pixels);
                }
                let mut limits = generic::image_limits(&self.limits);
                limits
                    .reserve(decoder.total_bytes())
                    .map_err(generic::image_error)?;
                let image = DynamicImage::from_decoder(decoder).map_err(generic::image_error)?;
                if self.format == SourceFormat::Jpeg && !jpeg::jpeg_is_complete(self.bytes) {
                    return Err(jpeg::truncated());
                }
                Ok(generic::into_pixels(image))
            }
        }
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::error::{CORRUPT_IMAGE, IMAGE_TOO_LARGE};
    use image::ImageEncoder;

    pub(crate) const LIMITS: Limits = Limits {
        max_width: 20_000,
        max_height: 20_000,
        max_pixels: 60_000_000,
        max_alloc_bytes: 512 * 1024 * 1024,
    };

    fn rgb(width: u32, height: u32) -> Vec<u8> {
        (0..width * height * 3)
            .map(|i| (i * 7 % 251) as u8)
            .collect()
    }

    pub(crate) fn jpeg(width: u16, height: u16, color: jpeg_encoder::ColorType) -> Vec<u8> {
        let channels = match color {
            jpeg_encoder::ColorType::Cmyk => 4,
            _ => 3,
        };
        let data: Vec<u8> = (0..usize::from(width) * usize::from(height) * channels)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(&data, width, height, color)
            .unwrap();
        out
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                &rgb(width, height),
                width,
                height,
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    /// Rewrites the IHDR size of a PNG (and its CRC).
    fn png_declaring(mut bytes: Vec<u8>, width: u32, height: u32) -> Vec<u8> {
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// Rewrites the SOF0 size of a baseline JPEG.
    fn jpeg_declaring(mut bytes: Vec<u8>, width: u16, height: u16) -> Vec<u8> {
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        bytes
    }

    fn encoded(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([x as u8, y as u8, 90, 255])
        });
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// The refusal of `bomb`: image_too_large, before decoding, naming the
    /// format, the size, the pixel count, the limits broken and their
    /// settings.
    fn assert_bomb(bomb: &[u8], name: &str, size: &str, broken: &[&str]) {
        let e = Probe::new(bomb, LIMITS).err().unwrap();
        assert_eq!(e.kind, IMAGE_TOO_LARGE, "{}", e.message);
        let expected = format!("the {name} declares {size} pixels (");
        assert!(e.message.starts_with(&expected), "{}", e.message);
        assert!(
            e.message
                .contains(" in all) and is refused before decoding: ")
        );
        for setting in broken {
            assert!(e.message.contains(setting), "{setting}: {}", e.message);
        }
    }

    #[test]
    fn a_jpeg_bomb_is_refused_from_its_header_with_the_reason() {
        let bomb = jpeg_declaring(jpeg(16, 16, jpeg_encoder::ColorType::Rgb), 30_000, 30_000);
        assert_bomb(
            &bomb,
            "JPEG",
            "30000x30000",
            &[
                "its width 30000 is over image.max_width (20000)",
                "its height 30000 is over image.max_height (20000)",
                "its 900000000 pixels are over image.max_pixels (60000000)",
            ],
        );
    }

    #[test]
    fn a_png_bomb_is_refused_from_its_header_with_the_reason() {
        let bomb = png_declaring(png(16, 16), 30_000, 30_000);
        assert_bomb(
            &bomb,
            "PNG",
            "30000x30000",
            &["image.max_width (20000)", "900000000 pixels"],
        );
        // Within width and height, over the pixel count.
        let wide = png_declaring(png(16, 16), 19_000, 19_000);
        assert_bomb(
            &wide,
            "PNG",
            "19000x19000",
            &["its 361000000 pixels are over image.max_pixels (60000000)"],
        );
    }

    #[test]
    fn a_gif_bomb_is_refused_from_its_header_with_the_reason() {
        let mut bomb = encoded(16, 16, image::ImageFormat::Gif);
        bomb[6..8].copy_from_slice(&30_000u16.to_le_bytes());
        bomb[8..10].copy_from_slice(&30_000u16.to_le_bytes());
        assert_bomb(&bomb, "GIF", "30000x30000", &["image.max_height (20000)"]);
    }

    #[test]
    fn a_webp_bomb_is_refused_from_its_header_with_the_reason() {
        // Lossless (VP8L): 14-bit sizes, so a bomb by its pixel count.
        let mut bomb = encoded(16, 16, image::ImageFormat::WebP);
        assert_eq!(&bomb[12..16], b"VP8L");
        let bits = 16383u32 | 16383 << 14 | u32::from(bomb[24] >> 4) << 28;
        bomb[21..25].copy_from_slice(&bits.to_le_bytes());
        assert_bomb(
            &bomb,
            "WebP",
            "16384x16384",
            &["its 268435456 pixels are over image.max_pixels (60000000)"],
        );
        // Extended (VP8X): a 24-bit canvas.
        let mut x = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
        x.extend_from_slice(&29_999u32.to_le_bytes()[..3]);
        x.extend_from_slice(&29_999u32.to_le_bytes()[..3]);
        assert_bomb(&x, "WebP", "30000x30000", &["image.max_width (20000)"]);
        // Lossy (VP8): 14-bit sizes after the start code.
        let mut lossy = b"RIFF\0\0\0\0WEBPVP8 \0\0\0\0\0\0\0\x9d\x01\x2a".to_vec();
        lossy.extend_from_slice(&16_000u16.to_le_bytes());
        lossy.extend_from_slice(&16_000u16.to_le_bytes());
        assert_bomb(&lossy, "WebP", "16000x16000", &["image.max_pixels"]);
    }

    #[test]
    fn text_is_no_image() {
        let e = Probe::new(b"hello, I am a text file", LIMITS)
            .err()
            .unwrap();
        assert_eq!(e.kind, UNSUPPORTED_FORMAT);
        assert!(e.message.contains("\"hello, I\""), "{}", e.message);
    }

    #[test]
    fn truncated_and_malformed_images_are_corrupt() {
        let whole = jpeg(64, 64, jpeg_encoder::ColorType::Rgb);
        for cut in [whole.len() - 2, whole.len() / 2] {
            for min in [8, 16, 32, 64] {
                let probe = Probe::new(&whole[..cut], LIMITS).unwrap();
                let e = probe.decode(min, min).unwrap_err();
                assert_eq!(e.kind, CORRUPT_IMAGE, "{}", e.message);
                assert!(e.message.contains("truncated"), "{min}: {}", e.message);
            }
        }
        let whole = png(64, 64);
        let e = Probe::new(&whole[..whole.len() / 2], LIMITS)
            .and_then(|p| p.decode(64, 64))
            .unwrap_err();
        assert_eq!(e.kind, CORRUPT_IMAGE, "{}", e.message);
        let e = Probe::new(&[0xFF, 0xD8, 0xFF, 0x00, 0x01], LIMITS)
            .err()
            .unwrap();
        assert_eq!(e.kind, CORRUPT_IMAGE, "{}", e.message);
    }

    #[test]
    fn cmyk_jpegs_take_the_generic_path_and_its_truncation_check() {
        let bytes = jpeg(40, 30, jpeg_encoder::ColorType::Cmyk);
        assert!(jpeg::jpeg_is_complete(&bytes));
        let px = Probe::new(&bytes, LIMITS).unwrap().decode(10, 10).unwrap();
        assert_eq!((px.width, px.height, px.layout), (40, 30, Layout::Rgb8));
        let cut = &bytes[..bytes.len() * 2 / 3];
        assert!(!jpeg::jpeg_is_complete(cut));
        let e = Probe::new(cut, LIMITS).unwrap().decode(10, 10).unwrap_err();
        assert_eq!(e.kind, CORRUPT_IMAGE, "{}", e.message);
        // A trailer after the end of the image is fine.
        let mut trailer = bytes.clone();
        trailer.extend_from_slice(b"\xFF\xDA trailing junk \xFF");
        assert!(jpeg::jpeg_is_complete(&trailer));
    }
}
