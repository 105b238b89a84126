//! The CPU work of one task, from source bytes to encoded outputs:
//! probe -> decode once (scaled where the format allows) -> for each
//! output: resize (fast_image_resize, SIMD) -> flatten alpha for JPEG ->
//! apply the EXIF orientation -> encode.
//!
//! Pure and synchronous: no I/O, no async. The worker runs [`render`] on
//! its image threads ([`crate::pool`]); the benchmark calls the very same
//! function. Geometry is worked out in the stored orientation, and the
//! EXIF rotation is applied to each small output rather than to the big
//! decoded image: the same pixels, a fraction of the work.

use std::time::{Duration, Instant};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer};
use warren::TaskError;

use crate::decode::{Layout, Pixels, Probe, SourceFormat};
use crate::encode::{encode, flatten};
use crate::error::{self, PROCESSING_FAILED};
use crate::spec::StoreKey;
use crate::spec::{Fit, Limits, OutputSpec, Rgb};

/// The resampling filter of the last step. Lanczos3 keeps thumbnails
/// sharp; it only ever sees at most about twice the output size (after a
/// shrink-on-load JPEG decode, or after [`PRE_REDUCE`]), so its wide kernel
/// costs little.
const FILTER: FilterType = FilterType::Lanczos3;

/// Reductions larger than this (along either axis) go in two steps, as
/// Pillow's `reduce()` and libvips' shrink do: an area average (box filter,
/// cheap, alias-free) down to twice the output size, then [`FILTER`]. A
/// 6000x4000 image into a 500x500 box resizes four times faster this way
/// than with Lanczos3 over the whole source, and looks the same.
const PRE_REDUCE: f64 = 3.0;

/// What the pipeline made of one task.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub source: SourceInfo,
    pub outputs: Vec<RenderedOutput>,
}

/// The source as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    pub format: SourceFormat,
    /// As displayed, i.e. after the EXIF orientation.
    pub width: u32,
    pub height: u32,
    /// The size it was decoded at (stored orientation): smaller than the
    /// stored size when a JPEG was scaled in the DCT domain.
    pub decoded_width: u32,
    pub decoded_height: u32,
    /// EXIF orientation, 1-8 (1: none).
    pub orientation: u8,
    pub decode_time: Duration,
}

/// One encoded output, ready to be written.
#[derive(Clone)]
pub struct RenderedOutput {
    pub key: StoreKey,
    pub format: crate::spec::OutputFormat,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for RenderedOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderedOutput")
            .field("key", &self.key)
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Decodes `source` once and renders every output from it.
pub fn render(
    source: &[u8],
    outputs: &[OutputSpec],
    background: Rgb,
    limits: Limits,
) -> Result<Rendered, TaskError> {
    let started = Instant::now();
    let probe = Probe::new(source, limits)?;
    let format = probe.format();
    let orientation = probe.orientation();
    let (stored_w, stored_h) = probe.dimensions();
    let plans: Vec<Plan> = outputs
        .iter()
        .map(|o| Plan::new(stored_w, stored_h, o, orientation))
        .collect();
    // One decode, at the resolution the most demanding output needs.
    let need_w = plans.iter().map(|p| p.need_w).max().unwrap_or(stored_w);
    let need_h = plans.iter().map(|p| p.need_h).max().unwrap_or(stored_h);
    let pixels = probe.decode(need_w.min(stored_w), need_h.min(stored_h))?;
    let decode_time = started.elapsed();

    let mut resizer = Resizer::new();
    let mut rendered = Vec::with_capacity(outputs.len());
    for (output, plan) in outputs.iter().zip(&plans) {
        let resized = resize(&mut resizer, &pixels, plan)?;
        let resized = if output.format().has_alpha() {
            resized
        } else {
            flatten(resized, background)
        };
        let oriented = orient(resized, orientation)?;
        let bytes = encode(&oriented, output.format(), output.quality())?;
        rendered.push(RenderedOutput {
            key: output.key().clone(),
            format: output.format(),
            width: oriented.width,
            height: oriented.height,
            bytes,
        });
    }
    let (width, height) = if transposes(orientation) {
        (stored_h, stored_w)
    } else {
        (stored_w, stored_h)
    };
    Ok(Rendered {
        source: SourceInfo {
            format,
            width,
            height,
            decoded_width: pixels.width,
            decoded_height: pixels.height,
            orientation: orientation.to_exif(),
            decode_time,
        },
        outputs: rendered,
    })
}

/// Whether the orientation swaps width and height.
fn transposes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// One output's geometry, in the stored orientation.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plan {
    /// The resized size (before orientation).
    out_w: u32,
    out_h: u32,
    /// The part of the source that is used, as fractions of its width and
    /// height (left, top, width, height): all of it, except for cover.
    /// Fractions, because the decoded image may be scaled (JPEG) or
    /// reduced across its width only (PNG).
    region: [f64; 4],
    /// The smallest decode of the whole source that keeps this output a
    /// downscale.
    need_w: u32,
    need_h: u32,
}

impl Plan {
    fn new(src_w: u32, src_h: u32, output: &OutputSpec, orientation: Orientation) -> Self {
        // The box is given as displayed; work in stored orientation.
        let (box_w, box_h) = if transposes(orientation) {
            (output.height(), output.width())
        } else {
            (output.width(), output.height())
        };
        let (sw, sh) = (f64::from(src_w), f64::from(src_h));
        let (bw, bh) = (f64::from(box_w), f64::from(box_h));
        let side = |v: f64, max: u32| (v.round() as u32).clamp(1, max);
        let whole = [0.0, 0.0, 1.0, 1.0];
        match output.fit() {
            Fit::Contain => {
                let scale = (bw / sw).min(bh / sh);
                let out_w = side(sw * scale, box_w);
                let out_h = side(sh * scale, box_h);
                Self {
                    out_w,
                    out_h,
                    region: whole,
                    need_w: out_w,
                    need_h: out_h,
                }
            }
            Fit::Cover => {
                let scale = (bw / sw).max(bh / sh);
                // The box, in source pixels, centred.
                let (fw, fh) = ((bw / scale / sw).min(1.0), (bh / scale / sh).min(1.0));
                Self {
                    out_w: box_w,
                    out_h: box_h,
                    region: [(1.0 - fw) / 2.0, (1.0 - fh) / 2.0, fw, fh],
                    need_w: ((sw * scale).ceil() as u32).max(box_w),
                    need_h: ((sh * scale).ceil() as u32).max(box_h),
                }
            }
            Fit::Fill => Self {
                out_w: box_w,
                out_h: box_h,
                region: whole,
                need_w: box_w,
                need_h: box_h,
            },
        }
    }
}

fn pixel_type(layout: Layout) -> PixelType {
    match layout {
        Layout::L8 => PixelType::U8,
        Layout::Rgb8 => PixelType::U8x3,
        Layout::Rgba8 => PixelType::U8x4,
    }
}

fn resize(resizer: &mut Resizer, src: &Pixels, plan: &Plan) -> Result<Pixels, TaskError> {
    let failed = |e: &dyn std::fmt::Display| {
        error::permanent(PROCESSING_FAILED, format!("resizing failed: {e}"))
    };
    let kind = pixel_type(src.layout);
    let src_view = ImageRef::new(src.width, src.height, &src.data, kind).map_err(|e| failed(&e))?;
    let (dw, dh) = (f64::from(src.width), f64::from(src.height));
    let [fx, fy, fw, fh] = plan.region;
    let (left, top, width, height) = (fx * dw, fy * dh, fw * dw, fh * dh);
    let mut dst = Image::new(plan.out_w, plan.out_h, kind);
    let reduce_w = width > PRE_REDUCE * f64::from(plan.out_w);
    let reduce_h = height > PRE_REDUCE * f64::from(plan.out_h);
    if reduce_w || reduce_h {
        // Box down to twice the output along the axes that shrink a lot
        // (cropping on the way), then the fine filter.
        let mid_side = |reduce: bool, out: u32, region: f64| {
            if reduce {
                out * 2
            } else {
                (region.round() as u32).max(1)
            }
        };
        let mut mid = Image::new(
            mid_side(reduce_w, plan.out_w, width),
            mid_side(reduce_h, plan.out_h, height),
            kind,
        );
        let coarse = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Box))
            .crop(left, top, width, height);
        resizer
            .resize(&src_view, &mut mid, &coarse)
            .map_err(|e| failed(&e))?;
        let fine = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FILTER));
        resizer
            .resize(&mid, &mut dst, &fine)
            .map_err(|e| failed(&e))?;
    } else {
        let fine = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FILTER))
            .crop(left, top, width, height);
        resizer
            .resize(&src_view, &mut dst, &fine)
            .map_err(|e| failed(&e))?;
    }
    Ok(Pixels {
        width: plan.out_w,
        height: plan.out_h,
        layout: src.layout,
        data: dst.into_vec(),
    })
}

/// Applies the EXIF orientation to a (small) resized image.
fn orient(pixels: Pixels, orientation: Orientation) -> Result<Pixels, TaskError> {
    if orientation == Orientation::NoTransforms {
        return Ok(pixels);
    }
    let Pixels {
        width,
        height,
        layout,
        data,
    } = pixels;
    let bad = || error::permanent(PROCESSING_FAILED, "a resized buffer has the wrong size");
    let mut image = match layout {
        Layout::L8 => {
            DynamicImage::ImageLuma8(ImageBuffer::from_raw(width, height, data).ok_or_else(bad)?)
        }
        Layout::Rgb8 => {
            DynamicImage::ImageRgb8(ImageBuffer::from_raw(width, height, data).ok_or_else(bad)?)
        }
        Layout::Rgba8 => {
            DynamicImage::ImageRgba8(ImageBuffer::from_raw(width, height, data).ok_or_else(bad)?)
        }
    };
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    Ok(Pixels {
        width,
        height,
        layout,
        data: image.into_bytes(),
    })
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::spec::OutputFormat;

    fn output(w: u32, h: u32, fit: Fit) -> OutputSpec {
        let key = StoreKey::parse("k", "out/x.jpg").unwrap();
        OutputSpec::new(w, h, fit, OutputFormat::Jpeg, 85, key).unwrap()
    }

    #[test]
    fn contain_keeps_the_aspect_ratio_inside_the_box() {
        let p = Plan::new(
            6000,
            4000,
            &output(500, 500, Fit::Contain),
            Orientation::NoTransforms,
        );
        assert_eq!(
            (p.out_w, p.out_h, p.region),
            (500, 333, [0.0, 0.0, 1.0, 1.0])
        );
        assert_eq!((p.need_w, p.need_h), (500, 333));
        // Taller than wide, and scaling up.
        let p = Plan::new(
            100,
            200,
            &output(300, 300, Fit::Contain),
            Orientation::NoTransforms,
        );
        assert_eq!((p.out_w, p.out_h), (150, 300));
        // Never a zero side.
        let p = Plan::new(
            10_000,
            10,
            &output(100, 100, Fit::Contain),
            Orientation::NoTransforms,
        );
        assert_eq!((p.out_w, p.out_h), (100, 1));
    }

    #[test]
    fn cover_fills_the_box_and_needs_the_overflow() {
        let p = Plan::new(
            6000,
            4000,
            &output(500, 500, Fit::Cover),
            Orientation::NoTransforms,
        );
        assert_eq!((p.out_w, p.out_h), (500, 500));
        // The middle two thirds of the width, all of the height.
        let [x, y, w, h] = p.region;
        assert!((x - 1.0 / 6.0).abs() < 1e-9 && y == 0.0, "{:?}", p.region);
        assert!((w - 2.0 / 3.0).abs() < 1e-9 && h == 1.0, "{:?}", p.region);
        assert_eq!((p.need_w, p.need_h), (750, 500));
    }

    #[test]
    fn fill_stretches_to_the_box() {
        let p = Plan::new(
            6000,
            4000,
            &output(300, 100, Fit::Fill),
            Orientation::NoTransforms,
        );
        assert_eq!(
            (p.out_w, p.out_h, p.region),
            (300, 100, [0.0, 0.0, 1.0, 1.0])
        );
    }

    #[test]
    fn a_rotated_source_is_planned_in_stored_orientation() {
        // Stored 4000x3000, displayed 3000x4000 (EXIF 6): a 300x400 fill box
        // is 400x300 in stored pixels.
        let p = Plan::new(
            4000,
            3000,
            &output(300, 400, Fit::Fill),
            Orientation::Rotate90,
        );
        assert_eq!((p.out_w, p.out_h), (400, 300));
        let p = Plan::new(
            4000,
            3000,
            &output(300, 300, Fit::Contain),
            Orientation::Rotate90,
        );
        assert_eq!((p.out_w, p.out_h), (300, 225));
    }

    fn limits() -> Limits {
        Limits {
            max_width: 20_000,
            max_height: 20_000,
            max_pixels: 60_000_000,
            max_alloc_bytes: 512 * 1024 * 1024,
        }
    }

    /// A JPEG stored `width` x `height`, red left half, blue right half,
    /// with EXIF orientation `exif`.
    fn oriented_jpeg(width: u16, height: u16, exif: u16) -> Vec<u8> {
        let data: Vec<u8> = (0..usize::from(height))
            .flat_map(|_| {
                (0..width).flat_map(|x| {
                    if x < width / 2 {
                        [230, 20, 20]
                    } else {
                        [20, 20, 230]
                    }
                })
            })
            .collect();
        let mut plain = Vec::new();
        jpeg_encoder::Encoder::new(&mut plain, 90)
            .encode(&data, width, height, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let mut tiff =
            b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
        tiff.extend_from_slice(&exif.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
        out.extend_from_slice(&((8 + tiff.len()) as u16).to_be_bytes());
        out.extend_from_slice(b"Exif\x00\x00");
        out.extend_from_slice(&tiff);
        out.extend_from_slice(&plain[2..]);
        out
    }

    #[test]
    fn one_decode_serves_every_output_and_orientation_is_applied() {
        let source = oriented_jpeg(800, 400, 6);
        let key = |k: &str| StoreKey::parse("k", k).unwrap();
        let outputs = [
            OutputSpec::new(
                100,
                100,
                Fit::Contain,
                OutputFormat::Png,
                85,
                key("o/a.png"),
            )
            .unwrap(),
            OutputSpec::new(300, 300, Fit::Cover, OutputFormat::Jpeg, 85, key("o/b.jpg")).unwrap(),
        ];
        let r = render(&source, &outputs, Rgb([255, 255, 255]), limits()).unwrap();
        assert_eq!(r.source.orientation, 6);
        assert_eq!((r.source.width, r.source.height), (400, 800));
        // The 300x300 cover of a displayed 400x800 needs 300x600 displayed,
        // 600x300 stored: a 1/2 decode (400x200) is too small, so in full.
        assert_eq!(
            (r.source.decoded_width, r.source.decoded_height),
            (800, 400)
        );
        assert_eq!((r.outputs[0].width, r.outputs[0].height), (50, 100));
        assert_red_over_blue(&r.outputs[0].bytes);
        let b = image::load_from_memory(&r.outputs[1].bytes).unwrap();
        assert_eq!((b.width(), b.height()), (300, 300));
    }

    #[test]
    fn a_jpeg_decoded_at_an_eighth_keeps_its_orientation() {
        // Stored 1600x800 (red left, blue right), EXIF 6: displayed
        // 800x1600, red on top. A 100x100 box needs only 1/8 (200x100).
        let source = oriented_jpeg(1600, 800, 6);
        let key = StoreKey::parse("k", "o/d.png").unwrap();
        let outputs =
            [OutputSpec::new(100, 100, Fit::Contain, OutputFormat::Png, 85, key).unwrap()];
        let r = render(&source, &outputs, Rgb([255, 255, 255]), limits()).unwrap();
        assert_eq!((r.source.width, r.source.height), (800, 1600));
        assert_eq!(
            (r.source.decoded_width, r.source.decoded_height),
            (200, 100)
        );
        assert_red_over_blue(&r.outputs[0].bytes);
    }

    /// A 50x100 image, red on top and blue below, as `oriented_jpeg`'s
    /// halves end up after an EXIF rotation of 90 degrees.
    fn assert_red_over_blue(encoded: &[u8]) {
        let image = image::load_from_memory(encoded).unwrap().into_rgb8();
        assert_eq!(image.dimensions(), (50, 100));
        let (top, bottom) = (image.get_pixel(25, 5).0, image.get_pixel(25, 95).0);
        assert!(top[0] > 180 && top[2] < 80, "top is red: {top:?}");
        assert!(
            bottom[2] > 180 && bottom[0] < 80,
            "bottom is blue: {bottom:?}"
        );
    }

    #[test]
    fn a_large_png_is_reduced_while_decoded_then_resized_in_two_steps() {
        // A 2000x1000 PNG into 100x100: reduced across to 200 wide while
        // read, then 20x down vertically through the box pre-reduction.
        let img = image::RgbImage::from_fn(2000, 1000, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 0])
        });
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let key = StoreKey::parse("k", "o/c.webp").unwrap();
        let outputs =
            [OutputSpec::new(100, 100, Fit::Contain, OutputFormat::Webp, 80, key).unwrap()];
        let r = render(png.get_ref(), &outputs, Rgb([0, 0, 0]), limits()).unwrap();
        assert_eq!(
            (r.source.decoded_width, r.source.decoded_height),
            (200, 1000)
        );
        let c = image::load_from_memory(&r.outputs[0].bytes).unwrap();
        assert_eq!((c.width(), c.height()), (100, 50));
    }
}
