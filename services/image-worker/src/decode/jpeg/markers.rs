//! The marker structure of a JPEG (ITU T.81 annex B): segments, the frame
//! header, quantisation and Huffman tables, restart intervals and scan
//! headers, each parsed from its own bytes and checked before use.
//!
//! [`support`] reads up to the first scan and says whether the scaled
//! decoder ([`super::scaled`]) handles the file: 8-bit Huffman-coded
//! baseline, extended or progressive frames, greyscale, YCbCr or RGB, with
//! sampling factors that divide each other. Everything else (CMYK,
//! 12-bit, lossless, arithmetic coding, odd sampling) keeps going through
//! `jpeg-decoder`.

use super::entropy::{Class, Corrupt, Huffman, corrupt};

pub(crate) const SOF0: u8 = 0xC0;
pub(crate) const SOF1: u8 = 0xC1;
pub(crate) const SOF2: u8 = 0xC2;
pub(crate) const DHT: u8 = 0xC4;
pub(crate) const SOS: u8 = 0xDA;
pub(crate) const DQT: u8 = 0xDB;
pub(crate) const DRI: u8 = 0xDD;
pub(crate) const EOI: u8 = 0xD9;

/// Where each coefficient of the zigzag sequence sits in its 8x8 block.
pub(crate) const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Finds the next marker at or after `pos`, skipping anything that is no
/// marker (stuffed `FF 00`, fill bytes, stray data, as libjpeg does), and
/// leaves `pos` just past it. `None` at the end of the data.
pub(crate) fn next_marker(data: &[u8], pos: &mut usize) -> Option<u8> {
    loop {
        let ff = data.get(*pos..)?.iter().position(|&b| b == 0xFF)?;
        *pos += ff + 1;
        while data.get(*pos) == Some(&0xFF) {
            *pos += 1;
        }
        match data.get(*pos) {
            None => return None,
            Some(0x00) => *pos += 1,
            Some(&marker) => {
                *pos += 1;
                return Some(marker);
            }
        }
    }
}

/// The segments of a file, one marker and its payload at a time.
pub(crate) struct Segments<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Segments<'a> {
    /// The segments after the start-of-image marker.
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 2 }
    }

    /// Where the next marker is looked for (after a scan: where its data
    /// ended).
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn seek(&mut self, pos: usize) {
        self.pos = pos;
    }

    /// The next marker and its payload (empty for markers that stand
    /// alone); `Ok(None)` when the data ends first.
    pub(crate) fn next(&mut self) -> Result<Option<(u8, &'a [u8])>, Corrupt> {
        let Some(marker) = next_marker(self.data, &mut self.pos) else {
            return Ok(None);
        };
        if matches!(marker, 0x01 | 0xD0..=0xD9) {
            return Ok(Some((marker, &[])));
        }
        let Some(len) = self
            .data
            .get(self.pos..self.pos + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return Ok(None);
        };
        if len < 2 {
            return Err(corrupt(format!(
                "segment {marker:02X} declares a length of {len}"
            )));
        }
        let Some(payload) = self.data.get(self.pos + 2..self.pos + len) else {
            return Ok(None);
        };
        self.pos += len;
        Ok(Some((marker, payload)))
    }
}

/// One component of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Component {
    pub id: u8,
    /// Sampling factors, 1 to 4.
    pub h: usize,
    pub v: usize,
    /// Which quantisation table, 0 to 3.
    pub tq: usize,
}

/// The frame header (SOF0, SOF1 or SOF2), with the block geometry it
/// implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub progressive: bool,
    pub width: usize,
    pub height: usize,
    pub components: Vec<Component>,
    pub h_max: usize,
    pub v_max: usize,
    pub mcus_x: usize,
    pub mcus_y: usize,
}

impl Frame {
    /// Parses a frame header; `None` for what the scaled decoder does not
    /// handle (not 8-bit, not one or three components, sampling factors
    /// that do not divide the largest).
    pub(crate) fn parse(marker: u8, p: &[u8]) -> Result<Option<Self>, Corrupt> {
        if !matches!(marker, SOF0 | SOF1 | SOF2) {
            return Ok(None);
        }
        let Some(&[precision, h1, h0, w1, w0, count]) = p.get(..6) else {
            return Err(corrupt("the frame header is cut short"));
        };
        let count = usize::from(count);
        if p.len() < 6 + 3 * count {
            return Err(corrupt("the frame header is cut short"));
        }
        let (height, width) = (
            usize::from(u16::from_be_bytes([h1, h0])),
            usize::from(u16::from_be_bytes([w1, w0])),
        );
        if precision != 8 || !(count == 1 || count == 3) || width == 0 || height == 0 {
            return Ok(None);
        }
        let mut components = Vec::with_capacity(count);
        for c in p[6..6 + 3 * count].chunks_exact(3) {
            let (h, v, tq) = (
                usize::from(c[1] >> 4),
                usize::from(c[1] & 15),
                usize::from(c[2]),
            );
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) || tq > 3 {
                return Err(corrupt("a frame component has invalid sampling or table"));
            }
            if components.iter().any(|o: &Component| o.id == c[0]) {
                return Ok(None);
            }
            components.push(Component { id: c[0], h, v, tq });
        }
        // One component is never interleaved: its factors do not matter.
        if count == 1 {
            components[0].h = 1;
            components[0].v = 1;
        }
        let h_max = components.iter().map(|c| c.h).max().unwrap_or(1);
        let v_max = components.iter().map(|c| c.v).max().unwrap_or(1);
        if components
            .iter()
            .any(|c| h_max % c.h != 0 || v_max % c.v != 0)
        {
            return Ok(None);
        }
        Ok(Some(Self {
            progressive: marker == SOF2,
            width,
            height,
            mcus_x: width.div_ceil(8 * h_max),
            mcus_y: height.div_ceil(8 * v_max),
            components,
            h_max,
            v_max,
        }))
    }

    /// The size of component `c` in blocks: what its samples cover, and
    /// the whole MCUs that hold them (interleaved scans fill those).
    pub(crate) fn blocks(&self, c: usize) -> Blocks {
        let comp = self.components[c];
        let width = (self.width * comp.h).div_ceil(self.h_max);
        let height = (self.height * comp.v).div_ceil(self.v_max);
        Blocks {
            width,
            height,
            used_x: width.div_ceil(8),
            used_y: height.div_ceil(8),
            padded_x: self.mcus_x * comp.h,
            padded_y: self.mcus_y * comp.v,
        }
    }
}

/// The sample and block extents of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocks {
    /// Samples at full scale.
    pub width: usize,
    pub height: usize,
    /// Blocks holding those samples.
    pub used_x: usize,
    pub used_y: usize,
    /// Blocks of whole MCUs.
    pub padded_x: usize,
    pub padded_y: usize,
}

/// Quantisation tables, in zigzag order.
pub(crate) type QuantTables = [Option<[u16; 64]>; 4];

pub(crate) fn parse_dqt(mut p: &[u8], tables: &mut QuantTables) -> Result<(), Corrupt> {
    while let Some((&pq_tq, rest)) = p.split_first() {
        let (wide, id) = (pq_tq >> 4, usize::from(pq_tq & 15));
        let size = if wide == 0 { 64 } else { 128 };
        if wide > 1 || id > 3 || rest.len() < size {
            return Err(corrupt("a quantisation table is malformed"));
        }
        let mut table = [0u16; 64];
        for (i, q) in table.iter_mut().enumerate() {
            *q = if wide == 0 {
                u16::from(rest[i])
            } else {
                u16::from_be_bytes([rest[2 * i], rest[2 * i + 1]])
            };
        }
        tables[id] = Some(table);
        p = &rest[size..];
    }
    Ok(())
}

/// Huffman tables by slot (0 to 3).
pub(crate) type HuffmanTables = [Option<Huffman>; 4];

/// Defines the tables of a DHT segment; returns how many.
pub(crate) fn parse_dht(
    mut p: &[u8],
    dc: &mut HuffmanTables,
    ac: &mut HuffmanTables,
) -> Result<usize, Corrupt> {
    let mut defined = 0;
    while let Some((&tc_th, rest)) = p.split_first() {
        let (class, id) = (tc_th >> 4, usize::from(tc_th & 15));
        let Some(counts) = rest.get(..16) else {
            return Err(corrupt("a Huffman table is cut short"));
        };
        let mut lengths = [0u8; 16];
        lengths.copy_from_slice(counts);
        let total: usize = lengths.iter().map(|&c| usize::from(c)).sum();
        let Some(values) = rest.get(16..16 + total) else {
            return Err(corrupt("a Huffman table is cut short"));
        };
        if id > 3 || class > 1 {
            return Err(corrupt("a Huffman table has an invalid class or slot"));
        }
        let (class, slots) = if class == 0 {
            (Class::Dc, &mut *dc)
        } else {
            (Class::Ac, &mut *ac)
        };
        slots[id] = Some(Huffman::new(class, &lengths, values)?);
        defined += 1;
        p = &rest[16 + total..];
    }
    Ok(defined)
}

pub(crate) fn parse_dri(p: &[u8]) -> Result<usize, Corrupt> {
    match p {
        [a, b, ..] => Ok(usize::from(u16::from_be_bytes([*a, *b]))),
        _ => Err(corrupt("the restart interval segment is cut short")),
    }
}

/// One component of a scan: its index in the frame, its DC and AC tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanComponent {
    pub index: usize,
    pub dc: usize,
    pub ac: usize,
}

/// A scan header (SOS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    pub components: Vec<ScanComponent>,
    /// Spectral selection (progressive): first and last coefficient.
    pub ss: usize,
    pub se: usize,
    /// Successive approximation (progressive): previous and current bit.
    pub ah: u8,
    pub al: u8,
}

impl Scan {
    pub(crate) fn parse(p: &[u8], frame: &Frame) -> Result<Self, Corrupt> {
        let count = usize::from(*p.first().ok_or_else(|| corrupt("an empty scan header"))?);
        let Some(tail) = p.get(1 + 2 * count..1 + 2 * count + 3) else {
            return Err(corrupt("a scan header is cut short"));
        };
        if count == 0 || count > frame.components.len() {
            return Err(corrupt(format!("a scan of {count} components")));
        }
        let mut components = Vec::with_capacity(count);
        for c in p[1..1 + 2 * count].chunks_exact(2) {
            let index = frame
                .components
                .iter()
                .position(|f| f.id == c[0])
                .ok_or_else(|| {
                    corrupt(format!("a scan names component {}, not in the frame", c[0]))
                })?;
            let (dc, ac) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
            if dc > 3 || ac > 3 || components.iter().any(|s: &ScanComponent| s.index == index) {
                return Err(corrupt("a scan component is invalid"));
            }
            components.push(ScanComponent { index, dc, ac });
        }
        let blocks_per_mcu: usize = components
            .iter()
            .map(|s| frame.components[s.index].h * frame.components[s.index].v)
            .sum();
        if count > 1 && blocks_per_mcu > 10 {
            return Err(corrupt("a scan has more than 10 blocks per MCU"));
        }
        let (ss, se, ah, al) = (
            usize::from(tail[0]),
            usize::from(tail[1]),
            tail[2] >> 4,
            tail[2] & 15,
        );
        if frame.progressive
            && (ss > se || se > 63 || (ss == 0 && se != 0) || (ss > 0 && count != 1) || al > 13)
        {
            return Err(corrupt(
                "a progressive scan has an invalid spectral selection",
            ));
        }
        Ok(Self {
            components,
            ss,
            se,
            ah,
            al,
        })
    }
}

/// How three components turn into RGB, decided as `jpeg-decoder` decides
/// (component ids, then JFIF, then the Adobe segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Colour {
    Grey,
    YCbCr,
    Rgb,
}

/// What the scaled decoder needs to know before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Support {
    pub progressive: bool,
    pub colour: Colour,
}

/// Whether the scaled decoder handles this JPEG, read up to its first
/// scan; `None` sends it to `jpeg-decoder`.
pub(crate) fn support(bytes: &[u8]) -> Option<Support> {
    let mut segments = Segments::new(bytes);
    let (mut jfif, mut adobe, mut frame) = (false, None, None);
    loop {
        let (marker, p) = segments.next().ok()??;
        match marker {
            0xE0 if p.starts_with(b"JFIF\0") => jfif = true,
            0xEE if p.starts_with(b"Adobe\0") => adobe = Some(*p.get(11)?),
            0xC0..=0xCF if !matches!(marker, DHT | 0xC8 | 0xCC) => {
                frame = Some(Frame::parse(marker, p).ok()??);
            }
            SOS => break,
            EOI => return None,
            _ => {}
        }
    }
    let frame = frame?;
    let ids: Vec<u8> = frame.components.iter().map(|c| c.id).collect();
    let colour = match ids.as_slice() {
        [_] => Colour::Grey,
        [1, 2, 3] => Colour::YCbCr,
        [82, 71, 66] => Colour::Rgb,
        [1, 34, 35] | [114, 103, 98] => return None,
        _ if jfif => Colour::YCbCr,
        _ => match adobe {
            Some(0) => Colour::Rgb,
            Some(1) | None => Colour::YCbCr,
            Some(_) => return None,
        },
    };
    Some(Support {
        progressive: frame.progressive,
        colour,
    })
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_past_stuffing_fill_and_stray_bytes() {
        let data = [0x12, 0xFF, 0x00, 0x34, 0xFF, 0xFF, 0xD3, 0xFF];
        let mut pos = 0;
        assert_eq!(next_marker(&data, &mut pos), Some(0xD3));
        assert_eq!(pos, 7);
        assert_eq!(next_marker(&data, &mut pos), None);
    }

    #[test]
    fn frames_outside_the_scaled_decoder_are_left_to_jpeg_decoder() {
        let frame = |precision: u8, count: u8, sampling: &[u8]| {
            let mut p = vec![precision, 0, 16, 0, 16, count];
            for (i, s) in sampling.iter().enumerate() {
                p.extend_from_slice(&[i as u8 + 1, *s, 0]);
            }
            Frame::parse(SOF0, &p)
        };
        let f = frame(8, 3, &[0x22, 0x11, 0x11]).unwrap().unwrap();
        assert_eq!((f.h_max, f.v_max, f.mcus_x, f.mcus_y), (2, 2, 1, 1));
        assert_eq!(f.blocks(1).used_x, 1);
        assert_eq!(frame(12, 3, &[0x11, 0x11, 0x11]).unwrap(), None);
        assert_eq!(frame(8, 4, &[0x11, 0x11, 0x11, 0x11]).unwrap(), None);
        assert_eq!(frame(8, 3, &[0x31, 0x21, 0x11]).unwrap(), None);
        assert!(frame(8, 3, &[0x51, 0x11, 0x11]).is_err());
        assert!(frame(8, 3, &[0x11]).is_err());
        assert_eq!(
            Frame::parse(0xC3, &[8, 0, 1, 0, 1, 1, 1, 0x11, 0]).unwrap(),
            None
        );
    }
}
