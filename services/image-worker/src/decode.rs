//! Decoding untrusted bytes, in two steps so nothing large is allocated
//! before the limits are checked.
//!
//! [`Probe::new`] recognises the format by its magic bytes (never by a file
//! name), reads only the header, and refuses an image whose declared size
//! is over the limits: a 30000x30000 "decompression bomb" costs a few
//! hundred bytes of parsing. [`Probe::decode`] then decodes at the smallest
//! resolution the outputs need. For JPEG that is where the speed comes
//! from: `jpeg-decoder` can run its inverse DCT at 1/2, 1/4 or 1/8 scale, so
//! a 6000x4000 photo bound for a 500x500 box decodes straight to 750x500
//! and never exists at full size (what libjpeg's `scale_num`, Pillow's
//! `draft()` and libvips' shrink-on-load do). A large PNG bound for a much
//! smaller output is read row by row, in strips of [`PNG_STRIP_ROWS`],
//! each strip box-reduced across its width as it arrives: a 6000x4000 PNG
//! becomes 1000x4000 without 72 MB of pixels ever being resident. Other
//! images decode in full through the `image` crate, with its allocation
//! limit set.
//!
//! A truncated file is an error, not a grey-padded picture: decoders that
//! tolerate truncation (as libjpeg does) would otherwise turn a half upload
//! into a "successful" thumbnail.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use warren::TaskError;

use crate::error::{self, CORRUPT_IMAGE, IMAGE_TOO_LARGE, PROCESSING_FAILED, UNSUPPORTED_FORMAT};
use crate::spec::Limits;

/// A source this many times wider than needed is reduced while it is
/// decoded (PNG), to twice the needed width.
pub const STREAM_REDUCE: u32 = 3;
/// Rows decoded before each horizontal reduction.
pub const PNG_STRIP_ROWS: u32 = 64;

/// The formats Warren decodes, recognised by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
}

impl SourceFormat {
    /// The format whose signature `bytes` start with.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(Self::Gif)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Gif => "gif",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
            Self::Webp => ImageFormat::WebP,
            Self::Gif => ImageFormat::Gif,
        }
    }
}

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
    /// fast path.
    Jpeg(Box<jpeg_decoder::Decoder<&'a [u8]>>),
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
                    describe_start(bytes)
                ),
            )
        })?;
        if format == SourceFormat::Jpeg
            && let Some(probe) = Self::jpeg(bytes, limits)?
        {
            return Ok(probe);
        }
        Self::generic(bytes, format, limits)
    }

    /// The JPEG fast path, or `None` for JPEGs it does not handle (CMYK,
    /// 12-bit, lossless, arithmetic coding), which go the generic way.
    fn jpeg(bytes: &'a [u8], limits: Limits) -> Result<Option<Self>, TaskError> {
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
        check_limits(width, height, &limits)?;
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
            format: SourceFormat::Jpeg,
            width,
            height,
            orientation,
            inner: ProbeInner::Jpeg(Box::new(decoder)),
            bytes,
            limits,
        }))
    }

    fn generic(bytes: &'a [u8], format: SourceFormat, limits: Limits) -> Result<Self, TaskError> {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
        reader.limits(image_limits(&limits));
        let mut decoder = reader.into_decoder().map_err(image_error)?;
        let (width, height) = decoder.dimensions();
        check_limits(width, height, &limits)?;
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
            ProbeInner::Jpeg(mut decoder) => {
                let (w, h) = jpeg_scaled_size(self.width, self.height, min_width, min_height);
                let to_u16 = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                decoder.scale(to_u16(w), to_u16(h)).map_err(jpeg_error)?;
                // Fails on a truncated scan by itself (UnexpectedEof).
                let data = decoder.decode().map_err(jpeg_error)?;
                let info = decoder.info().ok_or_else(|| {
                    error::permanent(CORRUPT_IMAGE, "the JPEG lost its frame header")
                })?;
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
            ProbeInner::Generic(decoder) => {
                if self.format == SourceFormat::Png
                    && min_width.saturating_mul(STREAM_REDUCE) <= self.width
                    && let Some(pixels) =
                        decode_png_reduced(self.bytes, min_width.max(1) * 2, &self.limits)?
                {
                    return Ok(pixels);
                }
                let mut limits = image_limits(&self.limits);
                limits.reserve(decoder.total_bytes()).map_err(image_error)?;
                let image = DynamicImage::from_decoder(decoder).map_err(image_error)?;
                if self.format == SourceFormat::Jpeg && !jpeg_is_complete(self.bytes) {
                    return Err(truncated());
                }
                Ok(into_pixels(image))
            }
        }
    }
}

/// Decodes a PNG row by row, reducing each strip of rows to `target_width`
/// with a box filter (an area average) as it arrives; the height is kept.
/// `None` for an interlaced PNG, whose rows do not arrive in order.
fn decode_png_reduced(
    bytes: &[u8],
    target_width: u32,
    limits: &Limits,
) -> Result<Option<Pixels>, TaskError> {
    use fast_image_resize::images::{Image, ImageRef};
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: usize::try_from(limits.max_alloc_bytes).unwrap_or(usize::MAX),
        },
    );
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(png_error)?;
    let (width, height) = (reader.info().width, reader.info().height);
    if reader.info().interlaced {
        return Ok(None);
    }
    let (color, _) = reader.output_color_type();
    // Grey with alpha is widened to RGBA: the pipeline has no grey-alpha.
    let (layout, kind, in_channels) = match color {
        png::ColorType::Grayscale => (Layout::L8, PixelType::U8, 1),
        png::ColorType::Rgb => (Layout::Rgb8, PixelType::U8x3, 3),
        png::ColorType::Rgba => (Layout::Rgba8, PixelType::U8x4, 4),
        png::ColorType::GrayscaleAlpha => (Layout::Rgba8, PixelType::U8x4, 2),
        png::ColorType::Indexed => {
            return Err(error::permanent(
                PROCESSING_FAILED,
                "the PNG palette was not expanded",
            ));
        }
    };
    let target_width = target_width.min(width);
    let channels = layout.bytes_per_pixel();
    let row_len = width as usize * channels;
    let line = reader
        .output_line_size(width)
        .ok_or_else(|| error::permanent(IMAGE_TOO_LARGE, "the PNG rows are too large"))?;
    let mut raw = vec![0u8; line];
    let mut strip = vec![0u8; row_len * PNG_STRIP_ROWS as usize];
    let mut out = Vec::with_capacity(target_width as usize * height as usize * channels);
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
    let failed = |e: &dyn std::fmt::Display| {
        error::permanent(PROCESSING_FAILED, format!("reducing the PNG failed: {e}"))
    };
    let mut rows_done = 0u32;
    while rows_done < height {
        let rows = PNG_STRIP_ROWS.min(height - rows_done);
        for r in 0..rows as usize {
            let dst = &mut strip[r * row_len..(r + 1) * row_len];
            if in_channels == 2 {
                if reader.read_row(&mut raw).map_err(png_error)?.is_none() {
                    return Err(png_truncated());
                }
                for (px, ga) in dst.chunks_exact_mut(4).zip(raw.chunks_exact(2)) {
                    px.copy_from_slice(&[ga[0], ga[0], ga[0], ga[1]]);
                }
            } else if reader.read_row(dst).map_err(png_error)?.is_none() {
                return Err(png_truncated());
            }
        }
        let src = ImageRef::new(width, rows, &strip[..row_len * rows as usize], kind)
            .map_err(|e| failed(&e))?;
        let mut dst = Image::new(target_width, rows, kind);
        resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| failed(&e))?;
        out.extend_from_slice(dst.buffer());
        rows_done += rows;
    }
    Ok(Some(Pixels {
        width: target_width,
        height,
        layout,
        data: out,
    }))
}

fn png_truncated() -> TaskError {
    error::permanent(
        CORRUPT_IMAGE,
        "the PNG is truncated: it ends before its last row",
    )
}

fn png_error(e: png::DecodingError) -> TaskError {
    match e {
        png::DecodingError::IoError(io) => error::permanent(
            CORRUPT_IMAGE,
            format!("the PNG is truncated or unreadable: {io}"),
        ),
        png::DecodingError::Format(f) => {
            error::permanent(CORRUPT_IMAGE, format!("the PNG is malformed: {f}"))
        }
        png::DecodingError::LimitsExceeded => error::permanent(
            IMAGE_TOO_LARGE,
            "decoding the PNG would allocate over image.max_alloc_bytes",
        ),
        other => error::permanent(
            PROCESSING_FAILED,
            format!("the PNG decoder failed: {other}"),
        ),
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
/// scan with zeros and reports success, while jpeg-decoder, the fast path,
/// fails on it by itself. Walks the marker structure (segment lengths, then
/// the entropy-coded data of each scan, where a literal `FF` is always
/// stuffed as `FF00`), so bytes inside EXIF blocks or a trailer appended
/// after the image cannot fool it.
fn jpeg_is_complete(b: &[u8]) -> bool {
    let mut i = 2; // past SOI
    loop {
        // Skip anything up to a marker, then its fill bytes.
        let Some(ff) = b
            .get(i..)
            .and_then(|rest| rest.iter().position(|&x| x == 0xFF))
        else {
            return false;
        };
        i += ff;
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {
                let Some(len) = b
                    .get(i..i + 2)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                else {
                    return false;
                };
                i += len;
                if marker == 0xDA {
                    // Entropy-coded data: up to the first real marker.
                    loop {
                        let Some(ff) = b
                            .get(i..)
                            .and_then(|rest| rest.iter().position(|&x| x == 0xFF))
                        else {
                            return false;
                        };
                        i += ff;
                        match b.get(i + 1) {
                            None => return false,
                            Some(0x00 | 0xD0..=0xD7) => i += 2,
                            Some(0xFF) => i += 1,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

fn truncated() -> TaskError {
    error::permanent(
        CORRUPT_IMAGE,
        "the JPEG is truncated: its data ends before the end-of-image marker",
    )
}

fn check_limits(width: u32, height: u32, limits: &Limits) -> Result<(), TaskError> {
    if width == 0 || height == 0 {
        return Err(error::permanent(
            CORRUPT_IMAGE,
            format!("the image declares an empty size ({width}x{height})"),
        ));
    }
    match limits.exceeded_by(width, height) {
        Some(why) => Err(error::permanent(
            IMAGE_TOO_LARGE,
            format!(
                "the image declares {width}x{height} pixels and is refused before decoding: {why}"
            ),
        )),
        None => Ok(()),
    }
}

fn image_limits(limits: &Limits) -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    l.max_alloc = Some(limits.max_alloc_bytes);
    l
}

/// Brings any decoded image to one of the pipeline's three layouts.
fn into_pixels(image: DynamicImage) -> Pixels {
    let (width, height) = (image.width(), image.height());
    let (layout, data) = match image {
        DynamicImage::ImageLuma8(b) => (Layout::L8, b.into_raw()),
        DynamicImage::ImageRgb8(b) => (Layout::Rgb8, b.into_raw()),
        DynamicImage::ImageRgba8(b) => (Layout::Rgba8, b.into_raw()),
        DynamicImage::ImageLuma16(_) => (Layout::L8, image.into_luma8().into_raw()),
        other if other.color().has_alpha() => (Layout::Rgba8, other.into_rgba8().into_raw()),
        other => (Layout::Rgb8, other.into_rgb8().into_raw()),
    };
    Pixels {
        width,
        height,
        layout,
        data,
    }
}

fn jpeg_error(e: jpeg_decoder::Error) -> TaskError {
    match e {
        jpeg_decoder::Error::Format(m) if m.contains("buffer size") || m.contains("exceeds") => {
            error::permanent(
                IMAGE_TOO_LARGE,
                format!("the JPEG is too large to decode: {m}"),
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

fn image_error(e: image::ImageError) -> TaskError {
    use image::ImageError as E;
    match e {
        E::Limits(l) => error::permanent(
            IMAGE_TOO_LARGE,
            format!("the image is refused before decoding: {l}"),
        ),
        E::Decoding(d) => error::permanent(CORRUPT_IMAGE, format!("the image is malformed: {d}")),
        E::IoError(io) => error::permanent(
            CORRUPT_IMAGE,
            format!("the image is truncated or unreadable: {io}"),
        ),
        E::Unsupported(u) => error::permanent(
            UNSUPPORTED_FORMAT,
            format!("the image uses a feature Warren does not decode: {u}"),
        ),
        other => error::permanent(PROCESSING_FAILED, format!("decoding failed: {other}")),
    }
}

/// The first bytes of a non-image, for the error message: as text when
/// they are printable, else as hex.
fn describe_start(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(8)];
    if head.is_empty() {
        return "nothing: it is empty".to_owned();
    }
    if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(head))
    } else {
        head.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    const LIMITS: Limits = Limits {
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

    fn jpeg(width: u16, height: u16, color: jpeg_encoder::ColorType) -> Vec<u8> {
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

    #[test]
    fn formats_are_recognised_by_their_bytes_only() {
        assert_eq!(
            SourceFormat::sniff(&jpeg(8, 8, jpeg_encoder::ColorType::Rgb)),
            Some(SourceFormat::Jpeg)
        );
        assert_eq!(SourceFormat::sniff(&png(2, 2)), Some(SourceFormat::Png));
        assert_eq!(
            SourceFormat::sniff(b"GIF89a......"),
            Some(SourceFormat::Gif)
        );
        assert_eq!(
            SourceFormat::sniff(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(SourceFormat::Webp)
        );
        assert_eq!(SourceFormat::sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(SourceFormat::sniff(b""), None);
        let e = Probe::new(b"hello, I am a text file", LIMITS)
            .err()
            .unwrap();
        assert_eq!(e.kind, UNSUPPORTED_FORMAT);
        assert!(e.message.contains("\"hello, I\""), "{}", e.message);
    }

    #[test]
    fn decompression_bombs_are_refused_from_the_header() {
        let bomb = jpeg_declaring(jpeg(16, 16, jpeg_encoder::ColorType::Rgb), 30_000, 30_000);
        let e = Probe::new(&bomb, LIMITS).err().unwrap();
        assert_eq!(e.kind, IMAGE_TOO_LARGE);
        assert!(e.message.contains("30000x30000"), "{}", e.message);
        let bomb = png_declaring(png(16, 16), 30_000, 30_000);
        let e = Probe::new(&bomb, LIMITS).err().unwrap();
        assert_eq!(e.kind, IMAGE_TOO_LARGE, "{}", e.message);
        // Within width and height, over the pixel count.
        let wide = png_declaring(png(16, 16), 19_000, 19_000);
        let e = Probe::new(&wide, LIMITS).err().unwrap();
        assert!(e.message.contains("pixels"), "{}", e.message);
    }

    #[test]
    fn truncated_and_malformed_images_are_corrupt() {
        let whole = jpeg(64, 64, jpeg_encoder::ColorType::Rgb);
        for cut in [whole.len() - 2, whole.len() / 2] {
            let probe = Probe::new(&whole[..cut], LIMITS).unwrap();
            let e = probe.decode(8, 8).unwrap_err();
            assert_eq!(e.kind, CORRUPT_IMAGE, "{}", e.message);
            assert!(e.message.contains("truncated"), "{}", e.message);
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
    fn jpegs_decode_scaled_in_the_dct_domain() {
        let bytes = jpeg(1600, 1200, jpeg_encoder::ColorType::Rgb);
        let probe = Probe::new(&bytes, LIMITS).unwrap();
        assert_eq!(probe.dimensions(), (1600, 1200));
        let px = probe.decode(200, 150).unwrap();
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
    }

    #[test]
    fn cmyk_jpegs_take_the_generic_path_and_its_truncation_check() {
        let bytes = jpeg(40, 30, jpeg_encoder::ColorType::Cmyk);
        assert!(jpeg_is_complete(&bytes));
        let px = Probe::new(&bytes, LIMITS).unwrap().decode(10, 10).unwrap();
        assert_eq!((px.width, px.height, px.layout), (40, 30, Layout::Rgb8));
        let cut = &bytes[..bytes.len() * 2 / 3];
        assert!(!jpeg_is_complete(cut));
        let e = Probe::new(cut, LIMITS).unwrap().decode(10, 10).unwrap_err();
        assert_eq!(e.kind, CORRUPT_IMAGE, "{}", e.message);
        // A trailer after the end of the image is fine.
        let mut trailer = bytes.clone();
        trailer.extend_from_slice(b"\xFF\xDA trailing junk \xFF");
        assert!(jpeg_is_complete(&trailer));
    }

    fn encode_png(
        data: &[u8],
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut e = png::Encoder::new(&mut out, width, height);
            e.set_color(color);
            e.set_depth(depth);
            let mut w = e.write_header().unwrap();
            w.write_image_data(data).unwrap();
        }
        out
    }

    #[test]
    fn wide_pngs_are_reduced_across_while_read_in_every_colour_type() {
        let (w, h) = (300u32, 70u32);
        let n = (w * h) as usize;
        let cases = [
            (png::ColorType::Grayscale, 1, Layout::L8),
            (png::ColorType::GrayscaleAlpha, 2, Layout::Rgba8),
            (png::ColorType::Rgb, 3, Layout::Rgb8),
            (png::ColorType::Rgba, 4, Layout::Rgba8),
        ];
        for (color, channels, layout) in cases {
            let data: Vec<u8> = (0..n * channels)
                .map(|i| {
                    if i % channels == channels - 1 && channels % 2 == 0 {
                        255
                    } else {
                        120
                    }
                })
                .collect();
            let bytes = encode_png(&data, w, h, color, png::BitDepth::Eight);
            let px = Probe::new(&bytes, LIMITS).unwrap().decode(50, 10).unwrap();
            assert_eq!(
                (px.width, px.height, px.layout),
                (100, 70, layout),
                "{color:?}"
            );
            assert_eq!(px.data.len(), 100 * 70 * layout.bytes_per_pixel());
            // A flat image stays flat through the box filter.
            assert!(
                px.data
                    .chunks(layout.bytes_per_pixel())
                    .all(|p| p[0] == 120),
                "{color:?}"
            );
        }
        // 16-bit: stripped to 8.
        let data = vec![0x80u8; n * 6];
        let bytes = encode_png(&data, w, h, png::ColorType::Rgb, png::BitDepth::Sixteen);
        let px = Probe::new(&bytes, LIMITS).unwrap().decode(50, 10).unwrap();
        assert_eq!((px.width, px.layout), (100, Layout::Rgb8));
        assert!(px.data.iter().all(|&b| b == 0x80));
        // Truncated while streaming.
        let bytes = encode_png(
            &vec![7u8; n * 3],
            w,
            h,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
        );
        let e = Probe::new(&bytes[..bytes.len() - 40], LIMITS)
            .unwrap()
            .decode(50, 10)
            .unwrap_err();
        assert_eq!(e.kind, CORRUPT_IMAGE, "{}", e.message);
    }
}
