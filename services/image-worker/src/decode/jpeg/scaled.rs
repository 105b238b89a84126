//! The scaled JPEG decoder: each 8x8 block straight to 1x1, 2x2 or 4x4
//! samples, for a 1/8, 1/4 or 1/2 decode.
//!
//! A sample at these scales is the average of the 8x8, 4x4 or 2x2 pixels
//! it stands for in the full-size image. That average is linear in the
//! block's coefficients, so each decoded coefficient adds its value times
//! a precomputed basis (quantisation folded in) to the block's samples:
//! the work is proportional to the coefficients in the file, and at 1/8 a
//! sample is the DC coefficient alone, so the AC coefficients are stepped
//! over without being computed ([`super::entropy`]). libjpeg-turbo's
//! reduced inverse DCTs are approximations of the same averages.
//!
//! Progressive files are decoded at 1/8 only, from their DC scans: the AC
//! scans, usually most of the file, are skipped marker to marker without
//! being read. At other scales they go through `jpeg-decoder`.

use warren::TaskError;

use super::entropy::{BitReader, Corrupt, Huffman, SKIP_END, Symbol, corrupt};
use super::markers::{
    self, DHT, DQT, DRI, EOI, Frame, HuffmanTables, QuantTables, SOF0, SOF1, SOF2, SOS, Scan,
    Segments, Support, ZIGZAG,
};
use super::output::{Plane, compose};
use crate::decode::limits::check_alloc;
use crate::decode::{Pixels, SourceFormat};
use crate::error::{self, CORRUPT_IMAGE};
use crate::spec::Limits;

/// Huffman table definitions a file may make: a progressive file defines a
/// few per scan, a hostile one could define millions.
const MAX_HUFFMAN_TABLES: usize = 1024;

/// Decodes `bytes` at `side` samples per block side (1, 2 or 4).
pub(crate) fn decode(
    bytes: &[u8],
    support: Support,
    side: usize,
    limits: &Limits,
) -> Result<Pixels, TaskError> {
    let mut decoder = Decoder::default();
    let mut segments = Segments::new(bytes);
    let mut tables = 0;
    loop {
        let (marker, payload) = segments.next().map_err(malformed)?.ok_or_else(truncated)?;
        match marker {
            SOF0 | SOF1 | SOF2 => {
                if decoder.frame.is_some() {
                    return Err(malformed(corrupt("the JPEG has two frame headers")));
                }
                let frame = Frame::parse(marker, payload)
                    .map_err(malformed)?
                    .ok_or_else(|| malformed(corrupt("the frame header changed")))?;
                decoder.start(frame, side, limits)?;
            }
            DHT => {
                // A table costs microseconds to build: a file made of
                // nothing but table definitions must not cost minutes.
                tables += markers::parse_dht(payload, &mut decoder.dc, &mut decoder.ac)
                    .map_err(malformed)?;
                if tables > MAX_HUFFMAN_TABLES {
                    return Err(malformed(corrupt(format!(
                        "the JPEG defines over {MAX_HUFFMAN_TABLES} Huffman tables"
                    ))));
                }
            }
            DQT => markers::parse_dqt(payload, &mut decoder.quant).map_err(malformed)?,
            DRI => decoder.restart = markers::parse_dri(payload).map_err(malformed)?,
            SOS => {
                let end = decoder
                    .scan(bytes, payload, segments.position())
                    .map_err(|e| {
                        if e.0 == "truncated" {
                            truncated()
                        } else {
                            malformed(e)
                        }
                    })?;
                segments.seek(end);
            }
            EOI => break,
            _ => {}
        }
    }
    decoder.finish(support)
}

fn truncated() -> TaskError {
    super::truncated()
}

fn malformed(e: Corrupt) -> TaskError {
    error::permanent(CORRUPT_IMAGE, format!("the JPEG is malformed: {e}"))
}

/// The box average of `side` x `side` parts of a block, per coefficient:
/// `basis[z][i]` is what coefficient `z` (zigzag order, dequantised)
/// adds to sample `i`.
fn basis<const N: usize>(side: usize, quant: &[u16; 64]) -> Box<[[f32; N]; 64]> {
    use std::f64::consts::{FRAC_1_SQRT_2, PI};
    let group = 8 / side;
    // One axis: sample `i` of frequency `u`, averaged over its group.
    let axis = |i: usize, u: usize| -> f64 {
        let c = if u == 0 { FRAC_1_SQRT_2 } else { 1.0 };
        (i * group..(i + 1) * group)
            .map(|x| c / 2.0 * ((2 * x + 1) as f64 * u as f64 * PI / 16.0).cos())
            .sum::<f64>()
            / group as f64
    };
    let mut table = [[0f64; 8]; 4];
    for (i, row) in table.iter_mut().enumerate().take(side) {
        for (u, a) in row.iter_mut().enumerate() {
            *a = axis(i, u);
        }
    }
    let mut out = Box::new([[0f32; N]; 64]);
    for (z, weights) in out.iter_mut().enumerate() {
        let (v, u) = (ZIGZAG[z] / 8, ZIGZAG[z] % 8);
        for (k, w) in weights.iter_mut().enumerate() {
            let (i, j) = (k / side, k % side);
            *w = (table[i][v] * table[j][u] * f64::from(quant[z])) as f32;
        }
    }
    out
}

#[derive(Default)]
struct Decoder {
    frame: Option<Frame>,
    side: usize,
    quant: QuantTables,
    dc: HuffmanTables,
    ac: HuffmanTables,
    restart: usize,
    /// Samples of each component (sequential), or its DC coefficients
    /// until the end (progressive).
    planes: Vec<Plane>,
    coefficients: Vec<Vec<i32>>,
    /// The quantisation table of each component, taken at its first scan.
    latched: Vec<Option<[u16; 64]>>,
}

impl Decoder {
    fn start(&mut self, frame: Frame, side: usize, limits: &Limits) -> Result<(), TaskError> {
        let mut bytes = 0u64;
        for c in 0..frame.components.len() {
            let b = frame.blocks(c);
            let blocks = (b.padded_x * b.padded_y) as u64;
            bytes += blocks * (side * side) as u64;
            if frame.progressive {
                bytes += blocks * 4;
            }
        }
        let out = frame.width.div_ceil(8 / side) * frame.height.div_ceil(8 / side);
        bytes += (out * frame.components.len()) as u64;
        check_alloc(SourceFormat::Jpeg, "its scaled planes", bytes, limits)?;
        for c in 0..frame.components.len() {
            let b = frame.blocks(c);
            self.planes.push(Plane::new(
                b.padded_x * side,
                b.padded_y * side,
                (b.width * side).div_ceil(8),
                (b.height * side).div_ceil(8),
            ));
            self.coefficients.push(if frame.progressive {
                vec![0; b.padded_x * b.padded_y]
            } else {
                Vec::new()
            });
        }
        self.latched = vec![None; frame.components.len()];
        self.side = side;
        self.frame = Some(frame);
        Ok(())
    }

    /// Decodes one scan whose entropy-coded data starts at `pos`; returns
    /// where its data ends.
    fn scan(&mut self, data: &[u8], header: &[u8], pos: usize) -> Result<usize, Corrupt> {
        let frame = self
            .frame
            .as_ref()
            .ok_or_else(|| corrupt("a scan before the frame header"))?;
        let scan = Scan::parse(header, frame)?;
        let progressive = frame.progressive;
        for sc in &scan.components {
            if self.latched[sc.index].is_none() {
                let tq = frame.components[sc.index].tq;
                self.latched[sc.index] = Some(
                    self.quant[tq]
                        .ok_or_else(|| corrupt(format!("quantisation table {tq} is missing")))?,
                );
            }
        }
        if progressive && scan.ss > 0 {
            // AC coefficients: not needed at 1/8.
            return skip_scan(data, pos);
        }
        let mut reader = BitReader::new(data, pos);
        match (progressive, self.side) {
            (true, _) => self.dc_scan(&scan, &mut reader)?,
            (false, 1) => self.sequential::<1>(&scan, &mut reader)?,
            (false, 2) => self.sequential::<4>(&scan, &mut reader)?,
            _ => self.sequential::<16>(&scan, &mut reader)?,
        }
        if reader.overran() {
            return Err(corrupt("truncated"));
        }
        Ok(reader.position())
    }

    fn sequential<const N: usize>(
        &mut self,
        scan: &Scan,
        reader: &mut BitReader,
    ) -> Result<(), Corrupt> {
        let frame = self.frame.as_ref().ok_or_else(|| corrupt("no frame"))?;
        let side = self.side;
        let interleaved = scan.components.len() > 1;
        let mut parts = Vec::with_capacity(scan.components.len());
        for sc in &scan.components {
            let comp = frame.components[sc.index];
            let quant = self.latched[sc.index].ok_or_else(|| corrupt("no quantisation table"))?;
            let dc = self.dc[sc.dc]
                .as_ref()
                .ok_or_else(|| corrupt(format!("DC table {} is missing", sc.dc)))?;
            let ac = self.ac[sc.ac]
                .as_ref()
                .ok_or_else(|| corrupt(format!("AC table {} is missing", sc.ac)))?;
            let (h, v) = if interleaved {
                (comp.h, comp.v)
            } else {
                (1, 1)
            };
            parts.push((sc.index, h, v, dc, ac, basis::<N>(side, &quant)));
        }
        let mut preds = vec![0i32; parts.len()];
        let mut planes = std::mem::take(&mut self.planes);
        let result = mcus(frame, self.restart, scan, reader, |r, mx, my, restarted| {
            if restarted {
                preds.fill(0);
            }
            for (k, (index, h, v, dc, ac, basis)) in parts.iter().enumerate() {
                let plane = &mut planes[*index];
                for by in 0..*v {
                    for bx in 0..*h {
                        let samples = block::<N>(r, dc, ac, &mut preds[k], basis)?;
                        plane.put(mx * h + bx, my * v + by, side, &samples);
                    }
                }
            }
            Ok(())
        });
        self.planes = planes;
        result
    }

    /// A progressive DC scan: first bits (`ah` 0) or one refinement bit.
    fn dc_scan(&mut self, scan: &Scan, reader: &mut BitReader) -> Result<(), Corrupt> {
        let frame = self.frame.as_ref().ok_or_else(|| corrupt("no frame"))?;
        let interleaved = scan.components.len() > 1;
        let mut parts = Vec::with_capacity(scan.components.len());
        for sc in &scan.components {
            let comp = frame.components[sc.index];
            let dc = self.dc[sc.dc].as_ref();
            if scan.ah == 0 && dc.is_none() {
                return Err(corrupt(format!("DC table {} is missing", sc.dc)));
            }
            let (h, v) = if interleaved {
                (comp.h, comp.v)
            } else {
                (1, 1)
            };
            parts.push((sc.index, h, v, dc, frame.blocks(sc.index).padded_x));
        }
        let (ah, al) = (scan.ah, u32::from(scan.al));
        let mut preds = vec![0i32; parts.len()];
        let mut coefficients = std::mem::take(&mut self.coefficients);
        let result = mcus(frame, self.restart, scan, reader, |r, mx, my, restarted| {
            if restarted {
                preds.fill(0);
            }
            for (k, (index, h, v, dc, stride)) in parts.iter().enumerate() {
                for by in 0..*v {
                    for bx in 0..*h {
                        let at = (my * v + by) * stride + mx * h + bx;
                        let Some(coefficient) = coefficients[*index].get_mut(at) else {
                            return Err(corrupt("a block outside its component"));
                        };
                        match dc {
                            Some(dc) if ah == 0 => {
                                preds[k] = preds[k].wrapping_add(dc_difference(r, dc)?);
                                *coefficient = preds[k].wrapping_shl(al);
                            }
                            _ => {
                                if r.bits(1) == 1 {
                                    *coefficient |= 1 << al;
                                }
                            }
                        }
                    }
                }
            }
            Ok(())
        });
        self.coefficients = coefficients;
        result
    }

    fn finish(mut self, support: Support) -> Result<Pixels, TaskError> {
        let frame = self
            .frame
            .take()
            .ok_or_else(|| malformed(corrupt("the JPEG has no frame header")))?;
        for (c, latched) in self.latched.iter().enumerate() {
            let Some(quant) = latched else {
                return Err(malformed(corrupt(format!(
                    "component {} has no scan",
                    frame.components[c].id
                ))));
            };
            if frame.progressive {
                let basis = basis::<1>(1, quant)[0][0];
                let b = frame.blocks(c);
                for (at, &coefficient) in self.coefficients[c].iter().enumerate() {
                    let sample = coefficient as f32 * basis;
                    self.planes[c].put(at % b.padded_x, at / b.padded_x, 1, &[sample]);
                }
            }
        }
        Ok(compose(&frame, &self.planes, support.colour, self.side))
    }
}

/// The MCUs of a scan, in order, with restart markers between intervals:
/// `visit(reader, mcu_x, mcu_y, restarted)` decodes one MCU, after
/// resetting its predictions if `restarted`.
fn mcus(
    frame: &Frame,
    restart: usize,
    scan: &Scan,
    reader: &mut BitReader,
    mut visit: impl FnMut(&mut BitReader, usize, usize, bool) -> Result<(), Corrupt>,
) -> Result<(), Corrupt> {
    // A scan of one component is not interleaved: its MCU is one block,
    // over the blocks that hold samples.
    let (across, down) = if scan.components.len() == 1 {
        let b = frame.blocks(scan.components[0].index);
        (b.used_x, b.used_y)
    } else {
        (frame.mcus_x, frame.mcus_y)
    };
    // A local copy whose address is never taken, so the reader's state
    // stays in registers across blocks.
    let mut r = *reader;
    let (mut count, mut next_rst) = (0usize, 0u8);
    for y in 0..down {
        for x in 0..across {
            let restarted = restart > 0 && count > 0 && count.is_multiple_of(restart);
            if restarted {
                r = r.restart(next_rst)?;
                next_rst = (next_rst + 1) & 7;
            }
            visit(&mut r, x, y, restarted)?;
            count += 1;
        }
        // Zeros past a truncated scan decode as something: stop early.
        if r.overran() {
            return Err(corrupt("truncated"));
        }
    }
    *reader = r;
    Ok(())
}

/// Skips the data of a scan the decoder does not need: up to the next
/// marker that is not a restart marker. Returns where that marker starts.
fn skip_scan(data: &[u8], mut pos: usize) -> Result<usize, Corrupt> {
    loop {
        match markers::next_marker(data, &mut pos) {
            Some(0xD0..=0xD7) => {}
            Some(_) => return Ok(pos - 2),
            None => return Err(corrupt("truncated")),
        }
    }
}

/// One DC difference.
#[inline(always)]
fn dc_difference(r: &mut BitReader, dc: &Huffman) -> Result<i32, Corrupt> {
    r.refill();
    Ok(match dc.lookup(r.peek()) {
        Symbol::Whole { len, value, .. } => {
            r.consume(len);
            value
        }
        Symbol::Code { len, symbol } => {
            r.consume(len);
            r.value(u32::from(symbol))
        }
        Symbol::Slow => {
            let size = r.slow_symbol(dc)?;
            r.value(u32::from(size))
        }
    })
}

/// Decodes one block into its `N` samples (centred on zero). At `N` = 1
/// the AC coefficients are stepped over.
#[inline(always)]
fn block<const N: usize>(
    r: &mut BitReader,
    dc: &Huffman,
    ac: &Huffman,
    pred: &mut i32,
    basis: &[[f32; N]; 64],
) -> Result<[f32; N], Corrupt> {
    *pred = pred.wrapping_add(dc_difference(r, dc)?);
    let dc_value = *pred as f32;
    let mut samples = [0f32; N];
    for (s, w) in samples.iter_mut().zip(&basis[0]) {
        *s = dc_value * w;
    }
    let mut k = 1usize;
    while k < 64 {
        if r.nbits() < 32 {
            r.refill();
        }
        if N == 1 {
            // Several coefficients at once, when they stay in this block.
            let e = ac.skip(r.peek_skip());
            let advance = usize::from((e >> 4) & 0x7F);
            if e != 0 && k + advance < 64 {
                r.consume(u32::from(e & 0xF));
                if e & SKIP_END != 0 {
                    break;
                }
                k += advance;
                continue;
            }
        }
        let (advance, value) = match ac.lookup(r.peek()) {
            Symbol::Whole {
                len,
                advance,
                value,
            } => {
                r.consume(len);
                (advance as usize, value)
            }
            Symbol::Code { len, symbol } => {
                r.consume(len);
                ac_symbol(r, symbol)
            }
            Symbol::Slow => {
                let symbol = r.slow_symbol(ac)?;
                ac_symbol(r, symbol)
            }
        };
        if advance == 0 {
            break;
        }
        k += advance;
        if N > 1 && k <= 64 {
            let weights = &basis[k - 1];
            let value = value as f32;
            for (s, w) in samples.iter_mut().zip(weights) {
                *s += value * w;
            }
        }
    }
    Ok(samples)
}

/// The advance and value of an AC symbol whose magnitude bits are still
/// to be read.
#[inline(always)]
fn ac_symbol(r: &mut BitReader, symbol: u8) -> (usize, i32) {
    let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
    match (run, size) {
        (15, 0) => (16, 0),
        (_, 0) => (0, 0),
        _ => (run + 1, r.value(size)),
    }
}
