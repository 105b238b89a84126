//! PNG much wider than its outputs need, read row by row: strips of
//! [`PNG_STRIP_ROWS`] rows, each box-reduced across its width as it
//! arrives, so a 6000x4000 PNG becomes 1000x4000 without 72 MB of pixels
//! ever being resident. Interlaced PNGs (rows out of order) and PNGs close
//! to their output size take the generic path.

use std::io::Cursor;

use warren::TaskError;

use super::{Layout, Pixels};
use crate::error::{self, CORRUPT_IMAGE, IMAGE_TOO_LARGE, PROCESSING_FAILED};
use crate::spec::Limits;

/// A source this many times wider than needed is reduced while it is
/// decoded, to twice the needed width.
pub const STREAM_REDUCE: u32 = 3;
/// Rows decoded before each horizontal reduction.
pub const PNG_STRIP_ROWS: u32 = 64;

/// Decodes a PNG row by row, reducing each strip of rows to `target_width`
/// with a box filter (an area average) as it arrives; the height is kept.
/// `None` for an interlaced PNG, whose rows do not arrive in order.
pub(crate) fn decode_png_reduced(
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

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::Probe;
    use super::super::tests::LIMITS;
    use super::*;

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
