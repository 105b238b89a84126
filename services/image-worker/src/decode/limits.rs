//! The size check every source passes before a decoder allocates a pixel:
//! the width and height its header declares, against `image.max_width`,
//! `image.max_height` and `image.max_pixels`.
//!
//! PNG, GIF and WebP declare their size in the first 30 bytes, so it is
//! read here, by hand, before any decoder sees the file: whichever format a
//! decompression bomb comes in, its reason names the format, the declared
//! size, the pixel count, each limit it breaks and the setting that holds
//! that limit. (Handed to `image` first, a PNG bomb would come back as
//! `image`'s own "Image size exceeds limit", with no figures.)

use warren::TaskError;

use super::SourceFormat;
use crate::error::{self, CORRUPT_IMAGE, IMAGE_TOO_LARGE};
use crate::spec::Limits;

/// The width and height the header of a PNG, GIF or WebP declares, or
/// `None` when the header is too short or not what it should be (the
/// decoder then reports what is wrong with it). JPEG sizes come from the
/// JPEG path, whose header can sit behind any number of segments.
pub(crate) fn declared_size(format: SourceFormat, b: &[u8]) -> Option<(u32, u32)> {
    let be32 = |at: usize| {
        b.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let le16 = |at: usize| {
        b.get(at..at + 2)
            .map(|s| u32::from(u16::from_le_bytes([s[0], s[1]])))
    };
    let le24 = |at: usize| {
        b.get(at..at + 3)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], 0]))
    };
    match format {
        // The signature, then IHDR, always the first chunk.
        SourceFormat::Png => {
            (b.get(12..16)? == b"IHDR").then_some(())?;
            Some((be32(16)?, be32(20)?))
        }
        // The logical screen descriptor, right after the signature.
        SourceFormat::Gif => Some((le16(6)?, le16(8)?)),
        SourceFormat::Webp => match b.get(12..16)? {
            // Lossy: a frame tag, the start code, then 14-bit sizes.
            b"VP8 " => {
                (b.get(23..26)? == [0x9D, 0x01, 0x2A]).then_some(())?;
                Some((le16(26)? & 0x3FFF, le16(28)? & 0x3FFF))
            }
            // Lossless: a signature byte, then two 14-bit sizes minus one.
            b"VP8L" => {
                (*b.get(20)? == 0x2F).then_some(())?;
                let bits = u32::from_le_bytes(b.get(21..25)?.try_into().ok()?);
                Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
            }
            // Extended: the canvas size, 24 bits each, minus one.
            b"VP8X" => Some((le24(24)? + 1, le24(27)? + 1)),
            _ => None,
        },
        SourceFormat::Jpeg => None,
    }
}

/// Refuses an empty size (corrupt) or one over the limits (too large),
/// with every limit the size breaks and the setting that holds it.
pub(crate) fn check_limits(
    format: SourceFormat,
    width: u32,
    height: u32,
    limits: &Limits,
) -> Result<(), TaskError> {
    let name = format.display_name();
    if width == 0 || height == 0 {
        return Err(error::permanent(
            CORRUPT_IMAGE,
            format!("the {name} declares an empty size ({width}x{height})"),
        ));
    }
    let pixels = u64::from(width) * u64::from(height);
    let mut broken = Vec::new();
    if width > limits.max_width {
        broken.push(format!(
            "its width {width} is over image.max_width ({})",
            limits.max_width
        ));
    }
    if height > limits.max_height {
        broken.push(format!(
            "its height {height} is over image.max_height ({})",
            limits.max_height
        ));
    }
    if pixels > limits.max_pixels {
        broken.push(format!(
            "its {pixels} pixels are over image.max_pixels ({})",
            limits.max_pixels
        ));
    }
    if broken.is_empty() {
        return Ok(());
    }
    Err(error::permanent(
        IMAGE_TOO_LARGE,
        format!(
            "the {name} declares {width}x{height} pixels ({pixels} in all) and is refused before decoding: {}",
            broken.join("; ")
        ),
    ))
}

/// Refuses a decode whose buffers would take over `image.max_alloc_bytes`.
pub(crate) fn check_alloc(
    format: SourceFormat,
    what: &str,
    bytes: u64,
    limits: &Limits,
) -> Result<(), TaskError> {
    if bytes <= limits.max_alloc_bytes {
        return Ok(());
    }
    Err(error::permanent(
        IMAGE_TOO_LARGE,
        format!(
            "decoding the {} would allocate {bytes} bytes for {what}, over image.max_alloc_bytes ({})",
            format.display_name(),
            limits.max_alloc_bytes
        ),
    ))
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_width: 20_000,
        max_height: 20_000,
        max_pixels: 60_000_000,
        max_alloc_bytes: 512 * 1024 * 1024,
    };

    #[test]
    fn the_reason_names_the_size_the_pixels_each_limit_and_its_setting() {
        let e = check_limits(SourceFormat::Gif, 30_000, 30_000, &LIMITS).unwrap_err();
        assert_eq!(e.kind, IMAGE_TOO_LARGE);
        assert_eq!(
            e.message,
            "the GIF declares 30000x30000 pixels (900000000 in all) and is refused before \
             decoding: its width 30000 is over image.max_width (20000); its height 30000 is \
             over image.max_height (20000); its 900000000 pixels are over image.max_pixels \
             (60000000)"
        );
        let e = check_limits(SourceFormat::Png, 19_000, 19_000, &LIMITS).unwrap_err();
        assert!(
            e.message.ends_with(
                "refused before decoding: its 361000000 pixels are over image.max_pixels (60000000)"
            ),
            "{}",
            e.message
        );
        let e = check_limits(SourceFormat::Webp, 0, 10, &LIMITS).unwrap_err();
        assert_eq!(e.kind, CORRUPT_IMAGE);
        assert!(check_limits(SourceFormat::Jpeg, 20_000, 3_000, &LIMITS).is_ok());
        let e = check_alloc(SourceFormat::Jpeg, "its planes", 1 << 40, &LIMITS).unwrap_err();
        assert_eq!(e.kind, IMAGE_TOO_LARGE);
        assert!(e.message.contains("image.max_alloc_bytes"), "{}", e.message);
    }

    #[test]
    fn the_reason_shown_in_the_docs_is_the_one_given() {
        let docs = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/image-worker.md"
        ));
        let docs = docs.split_whitespace().collect::<Vec<_>>().join(" ");
        let e = check_limits(SourceFormat::Png, 30_000, 30_000, &LIMITS).unwrap_err();
        assert!(docs.contains(&format!("`{}`", e.message)), "{}", e.message);
    }

    #[test]
    fn short_or_odd_headers_declare_nothing() {
        for format in [SourceFormat::Png, SourceFormat::Gif, SourceFormat::Webp] {
            assert_eq!(declared_size(format, b""), None);
            assert_eq!(declared_size(format, b"\x89PNG\r\n\x1a\n\0"), None);
        }
        let mut webp = b"RIFF\0\0\0\0WEBPVP8Z".to_vec();
        webp.resize(40, 0);
        assert_eq!(declared_size(SourceFormat::Webp, &webp), None);
    }
}
