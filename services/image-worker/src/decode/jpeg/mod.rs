//! JPEG: the header through `jpeg-decoder` (size, limits, EXIF
//! orientation), then the cheapest decode that still covers the outputs.
//!
//! Decoding at 1/8, 1/4 or 1/2 of the stored size (what libjpeg's
//! `scale_num`, Pillow's `draft()` and libvips' shrink-on-load do) is where
//! the speed comes from: a 6000x4000 photo bound for a 500x500 box decodes
//! straight to 750x500 and never exists at full size. Baseline and
//! extended JPEGs at those scales, and progressive ones at 1/8, go through
//! Warren's own scaled decoder ([`scaled`]), which steps over the
//! coefficients a scale does not use instead of decoding them; everything
//! else (full size, CMYK, 12-bit, progressive at 1/4 or 1/2) through
//! `jpeg-decoder`'s scaled inverse DCT. Both are pure Rust.

mod entropy;
pub(crate) mod markers;
mod output;
mod scaled;
#[cfg(test)]
mod tests;

use image::metadata::Orientation;
use warren::TaskError;

use super::limits::check_limits;
use super::{Layout, Pixels, SourceFormat};
use crate::error::{self, CORRUPT_IMAGE, IMAGE_TOO_LARGE, PROCESSING_FAILED, UNSUPPORTED_FORMAT};
use crate::spec::Limits;

/// A JPEG whose header was read and found within the limits.
pub(crate) struct JpegProbe<'a> {
    decoder: Box<jpeg_decoder::Decoder<&'a [u8]>>,
    support: Option<markers::Support>,
    bytes: &'a [u8],
    limits: Limits,
    pub width: u32,
    pub height: u32,
    pub orientation: Orientation,
}

impl<'a> JpegProbe<'a> {
    /// Reads the header, or `None` for JPEGs `jpeg-decoder` does not
    /// handle at all (CMYK, 12-bit, lossless, arithmetic coding), which go
    /// the generic way.
    pub(crate) fn new(bytes: &'a [u8], limits: Limits) -> Result<Option<Self>, TaskError> {
        let mut decoder = jpeg_decoder::Decoder::new(bytes);
        decoder.set_max_decoding_buffer_size(
            usize::try_from(limits.max_alloc_bytes).unwrap_or(usize::MAX),
        );
        match decoder.read_info() {
            Ok(()) => {}
            Err(jpeg_decoder::Error::Unsupported(_)) => return Ok(None),
            Err(e) => return Err(jpeg_error(e)),
        }
        let Some(info) = decoder.info() else {
            return Err(error::permanent(
                CORRUPT_IMAGE,
                "the JPEG has no frame header",
            ));
        };
        let (width, height) = (u32::from(info.width), u32::from(info.height));
        check_limits(SourceFormat::Jpeg, width, height, &limits)?;
        let supported = matches!(
            info.pixel_format,
            jpeg_decoder::PixelFormat::L8 | jpeg_decoder::PixelFormat::RGB24
        ) && info.coding_process != jpeg_decoder::CodingProcess::Lossless;
        if !supported {
            return Ok(None);
        }
        let orientation = decoder
            .exif_data()
            .and_then(Orientation::from_exif_chunk)
            .unwrap_or(Orientation::NoTransforms);
        Ok(Some(Self {
            decoder: Box::new(decoder),
            support: markers::support(bytes),
            bytes,
            limits,
            width,
            height,
            orientation,
        }))
    }

    /// Decodes at the smallest scale that is at least `min_width` x
    /// `min_height`.
    pub(crate) fn decode(self, min_width: u32, min_height: u32) -> Result<Pixels, TaskError> {
        let (w, h) = jpeg_scaled_size(self.width, self.height, min_width, min_height);
        let side = [1, 2, 4]
            .into_iter()
            .find(|&s| w == (self.width * s).div_ceil(8) && h == (self.height * s).div_ceil(8));
        match (self.support, side) {
            (Some(support), Some(side)) if !support.progressive || side == 1 => {
                scaled::decode(self.bytes, support, side as usize, &self.limits)
            }
            _ => self.with_jpeg_decoder(w, h),
        }
    }

    fn with_jpeg_decoder(self, w: u32, h: u32) -> Result<Pixels, TaskError> {
        let mut decoder = self.decoder;
        let to_u16 = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        decoder.scale(to_u16(w), to_u16(h)).map_err(jpeg_error)?;
        // Fails on a truncated scan by itself (UnexpectedEof).
        let data = decoder.decode().map_err(jpeg_error)?;
        let info = decoder
            .info()
            .ok_or_else(|| error::permanent(CORRUPT_IMAGE, "the JPEG lost its frame header"))?;
        let layout = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => Layout::L8,
            _ => Layout::Rgb8,
        };
        let (width, height) = (u32::from(info.width), u32::from(info.height));
        let expected = width as usize * height as usize * layout.bytes_per_pixel();
        if data.len() != expected {
            return Err(error::permanent(
                CORRUPT_IMAGE,
                format!(
                    "the JPEG decoded to {} bytes, not the {expected} of {width}x{height}",
                    data.len()
                ),
            ));
        }
        Ok(Pixels {
            width,
            height,
            layout,
            data,
        })
    }
}

/// The smallest 1/8, 1/4, 1/2 or full-size decode of a `width` x `height`
/// JPEG that is at least `min_width` x `min_height`.
pub fn jpeg_scaled_size(width: u32, height: u32, min_width: u32, min_height: u32) -> (u32, u32) {
    for scale in [1, 2, 4] {
        let w = (width * scale).div_ceil(8);
        let h = (height * scale).div_ceil(8);
        if w >= min_width && h >= min_height {
            return (w, h);
        }
    }
    (width, height)
}

/// Whether the JPEG's segments and scans run to an end-of-image marker.
///
/// For the generic path only: zune-jpeg (like libjpeg) pads a truncated
/// scan with zeros and reports success, while the scaled decoder and
/// jpeg-decoder fail on it by themselves. Walks the marker structure
/// (segment lengths, then the entropy-coded data of each scan, where a
/// literal `FF` is always stuffed as `FF00`), so bytes inside EXIF blocks
/// or a trailer appended after the image cannot fool it.
pub(crate) fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut segments = markers::Segments::new(bytes);
    loop {
        match segments.next() {
            Ok(Some((markers::EOI, _))) => return true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return false,
        }
    }
}

pub(crate) fn truncated() -> TaskError {
    error::permanent(
        CORRUPT_IMAGE,
        "the JPEG is truncated: its data ends before the end-of-image marker",
    )
}

fn jpeg_error(e: jpeg_decoder::Error) -> TaskError {
    match e {
        jpeg_decoder::Error::Format(m) if m.contains("buffer size") || m.contains("exceeds") => {
            error::permanent(
                IMAGE_TOO_LARGE,
                format!("the JPEG is too large to decode, over image.max_alloc_bytes: {m}"),
            )
        }
        jpeg_decoder::Error::Format(m) => {
            error::permanent(CORRUPT_IMAGE, format!("the JPEG is malformed: {m}"))
        }
        jpeg_decoder::Error::Io(e) => error::permanent(
            CORRUPT_IMAGE,
            format!("the JPEG is truncated or unreadable: {e}"),
        ),
        jpeg_decoder::Error::Unsupported(f) => error::permanent(
            UNSUPPORTED_FORMAT,
            format!("the JPEG uses a feature Warren does not decode: {f:?}"),
        ),
        other => error::permanent(
            PROCESSING_FAILED,
            format!("the JPEG decoder failed: {other}"),
        ),
    }
}
