//! From the scaled decoder's component planes to the pipeline's pixels:
//! chroma brought up to the luma's size, then YCbCr to RGB.
//!
//! Subsampled chroma (4:2:0, 4:2:2, 4:4:0) is upsampled with the
//! triangle filter libjpeg calls "fancy upsampling", which
//! `jpeg-decoder` uses too (each output sample is 3/4 of its nearest
//! chroma sample and 1/4 of the next nearest, across and down); other
//! ratios replicate. The colour conversion is JFIF's (ITU-R BT.601, full
//! range), in 16-bit fixed point.

use super::markers::{Colour, Frame};
use crate::decode::{Layout, Pixels};

/// The samples of one component at the decode scale.
pub(crate) struct Plane {
    data: Vec<u8>,
    stride: usize,
    /// Samples that belong to the image; the rest pads whole MCUs.
    width: usize,
    height: usize,
}

impl Plane {
    pub(crate) fn new(stride: usize, rows: usize, width: usize, height: usize) -> Self {
        Self {
            data: vec![0; stride * rows],
            stride,
            width: width.clamp(1, stride.max(1)),
            height: height.clamp(1, rows.max(1)),
        }
    }

    /// Writes the `side` x `side` samples of block (`bx`, `by`), given
    /// centred on zero.
    #[inline(always)]
    pub(crate) fn put(&mut self, bx: usize, by: usize, side: usize, samples: &[f32]) {
        for (i, row) in samples.chunks_exact(side).enumerate() {
            let at = (by * side + i) * self.stride + bx * side;
            if let Some(dst) = self.data.get_mut(at..at + side) {
                for (d, s) in dst.iter_mut().zip(row) {
                    // Rounds half up; `as` saturates to 0..=255.
                    *d = (s + 128.5) as u8;
                }
            }
        }
    }

    fn row(&self, y: usize) -> &[u8] {
        let y = y.min(self.height - 1);
        &self.data[y * self.stride..y * self.stride + self.width]
    }
}

/// Builds the image from its planes: `side` samples per block side.
pub(crate) fn compose(frame: &Frame, planes: &[Plane], colour: Colour, side: usize) -> Pixels {
    let width = (frame.width * side).div_ceil(8);
    let height = (frame.height * side).div_ceil(8);
    if colour == Colour::Grey || planes.len() < 3 {
        let mut data = Vec::with_capacity(width * height);
        for y in 0..height {
            let row = planes[0].row(y);
            data.extend((0..width).map(|x| row[x.min(row.len() - 1)]));
        }
        return pixels(width, height, Layout::L8, data);
    }
    let mut data = vec![0u8; width * height * 3];
    let mut rows = [vec![0u8; width], vec![0u8; width], vec![0u8; width]];
    let mut sums = vec![0u16; width];
    for (y, out) in data.chunks_exact_mut(width * 3).enumerate() {
        for (c, row) in rows.iter_mut().enumerate() {
            let comp = frame.components[c];
            let (hr, vr) = (frame.h_max / comp.h, frame.v_max / comp.v);
            if hr > 1 || vr > 1 {
                upsample_row(&planes[c], hr, vr, y, row, &mut sums);
            }
        }
        // Full-resolution components are read in place.
        let row = |c: usize| -> &[u8] {
            let comp = frame.components[c];
            if comp.h == frame.h_max && comp.v == frame.v_max {
                let plane = planes[c].row(y);
                &plane[..width.min(plane.len())]
            } else {
                &rows[c]
            }
        };
        let (a, b, c) = (row(0), row(1), row(2));
        match colour {
            Colour::YCbCr => ycbcr_to_rgb(a, b, c, out),
            _ => {
                for (((px, r), g), b) in out.chunks_exact_mut(3).zip(a).zip(b).zip(c) {
                    px.copy_from_slice(&[*r, *g, *b]);
                }
            }
        }
    }
    pixels(width, height, Layout::Rgb8, data)
}

fn pixels(width: usize, height: usize, layout: Layout, data: Vec<u8>) -> Pixels {
    Pixels {
        width: width as u32,
        height: height as u32,
        layout,
        data,
    }
}

/// Output row `y` of a component subsampled `hr` x `vr` times.
fn upsample_row(plane: &Plane, hr: usize, vr: usize, y: usize, out: &mut [u8], sums: &mut [u16]) {
    let last = plane.width - 1;
    if hr > 2 || vr > 2 {
        let row = plane.row(y / vr);
        for (x, o) in out.iter_mut().enumerate() {
            *o = row[(x / hr).min(last)];
        }
        return;
    }
    // Down: four times the sample, from the nearest row and the next.
    let near = plane.row(y / vr);
    let used = (last + 1).min(sums.len());
    let sums = &mut sums[..used];
    if vr == 2 {
        let cy = (y / 2).min(plane.height - 1);
        let other = if y.is_multiple_of(2) {
            cy.saturating_sub(1)
        } else {
            cy + 1
        };
        let far = plane.row(other);
        for ((s, n), f) in sums.iter_mut().zip(near).zip(far) {
            *s = 3 * u16::from(*n) + u16::from(*f);
        }
    } else {
        for (s, n) in sums.iter_mut().zip(near) {
            *s = 4 * u16::from(*n);
        }
    }
    let sums = &*sums;
    let last = sums.len() - 1;
    if hr == 2 {
        for (x, o) in out.iter_mut().enumerate() {
            let cx = (x / 2).min(last);
            let other = if x.is_multiple_of(2) {
                cx.saturating_sub(1)
            } else {
                (cx + 1).min(last)
            };
            *o = ((3 * u32::from(sums[cx]) + u32::from(sums[other]) + 8) >> 4) as u8;
        }
    } else {
        for (x, o) in out.iter_mut().enumerate() {
            *o = ((u32::from(sums[x.min(last)]) + 2) >> 2) as u8;
        }
    }
}

/// JFIF's YCbCr to RGB, 16-bit fixed point.
fn ycbcr_to_rgb(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    const R_CR: i32 = 91_881; // 1.402
    const G_CB: i32 = 22_554; // 0.344136
    const G_CR: i32 = 46_802; // 0.714136
    const B_CB: i32 = 116_130; // 1.772
    const HALF: i32 = 1 << 15;
    for (((px, &y), &cb), &cr) in out.chunks_exact_mut(3).zip(y).zip(cb).zip(cr) {
        let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
        let r = y + ((R_CR * cr + HALF) >> 16);
        let g = y + ((-G_CB * cb - G_CR * cr + HALF) >> 16);
        let b = y + ((B_CB * cb + HALF) >> 16);
        px[0] = r.clamp(0, 255) as u8;
        px[1] = g.clamp(0, 255) as u8;
        px[2] = b.clamp(0, 255) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_stays_grey_and_primaries_convert() {
        let mut out = [0u8; 9];
        ycbcr_to_rgb(&[128, 76, 0], &[128, 85, 128], &[128, 255, 128], &mut out);
        assert_eq!(&out[..3], &[128, 128, 128]);
        // BT.601 red.
        assert!(out[3] > 250 && out[4] < 5 && out[5] < 5, "{out:?}");
        assert_eq!(&out[6..], &[0, 0, 0]);
    }

    #[test]
    fn chroma_is_upsampled_with_the_triangle_filter() {
        // Two chroma samples across, one row: 0 and 200.
        let mut plane = Plane::new(8, 1, 2, 1);
        plane.put(0, 0, 2, &[-128.0, 72.0, -128.0, 72.0]);
        let mut out = [0u8; 4];
        let mut sums = [0u16; 4];
        upsample_row(&plane, 2, 1, 0, &mut out, &mut sums);
        assert_eq!(out, [0, 50, 150, 200]);
        // Replication for a ratio of 4.
        let mut out = [0u8; 8];
        upsample_row(&plane, 4, 1, 0, &mut out, &mut sums);
        assert_eq!(out, [0, 0, 0, 0, 200, 200, 200, 200]);
    }
}
