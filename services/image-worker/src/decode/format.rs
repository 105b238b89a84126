//! Which format a source is, told by its first bytes (the contract crate's
//! [`SourceFormat::sniff`]) and never by a file name or a content type that a
//! client chose; here, what the decoder needs on top of it.

use image::ImageFormat;
pub use warren_tasks::image::SourceFormat;

/// The `image` crate's name for a format.
pub(crate) fn image_format(format: SourceFormat) -> ImageFormat {
    match format {
        SourceFormat::Jpeg => ImageFormat::Jpeg,
        SourceFormat::Png => ImageFormat::Png,
        SourceFormat::Webp => ImageFormat::WebP,
        SourceFormat::Gif => ImageFormat::Gif,
    }
}

/// The first bytes of a non-image, for the error message: as text when
/// they are printable, else as hex.
pub(crate) fn describe_start(bytes: &[u8]) -> String {
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
mod tests {
    use super::*;

    #[test]
    fn a_non_image_is_described_by_its_first_bytes() {
        assert_eq!(describe_start(b""), "nothing: it is empty");
        assert_eq!(describe_start(b"hello, I am text"), "\"hello, I\"");
        assert_eq!(describe_start(&[0, 1, 0xFE]), "00 01 fe");
        assert_eq!(image_format(SourceFormat::Webp), ImageFormat::WebP);
    }
}
