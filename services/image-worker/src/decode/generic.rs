//! The path for everything without a faster one (WebP, GIF, interlaced or
//! small PNGs, CMYK and 12-bit JPEGs): the `image` crate, decoding in full
//! with its allocation limit set, brought to one of the pipeline's layouts.

use image::DynamicImage;
use warren::TaskError;

use super::{Layout, Pixels};
use crate::error::{self, CORRUPT_IMAGE, IMAGE_TOO_LARGE, PROCESSING_FAILED, UNSUPPORTED_FORMAT};
use crate::spec::Limits;

pub(crate) fn image_limits(limits: &Limits) -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    l.max_alloc = Some(limits.max_alloc_bytes);
    l
}

/// Brings any decoded image to one of the pipeline's three layouts.
pub(crate) fn into_pixels(image: DynamicImage) -> Pixels {
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

pub(crate) fn image_error(e: image::ImageError) -> TaskError {
    use image::ImageError as E;
    match e {
        // The declared size was checked before; this is a frame larger
        // than its canvas, or a buffer over the allocation limit.
        E::Limits(l) => error::permanent(
            IMAGE_TOO_LARGE,
            format!(
                "the image is refused while decoding: {l} (image.max_width, image.max_height, \
                 image.max_alloc_bytes)"
            ),
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
