//! Huffman decoding of a JPEG scan: the bit reader and the code tables.
//!
//! At a 1/8 scale every AC coefficient is parsed only to be thrown away,
//! so the cost of a scan is the cost of stepping over its symbols. Each
//! table therefore has a [`FAST_BITS`]-bit lookup whose entries hold the
//! code *and* its magnitude bits: one lookup and one shift step over a
//! whole coefficient (its length, how far it moves along the block, and
//! its value, already sign-extended) for the codes that make up nearly all
//! of a photograph. Longer codes take the canonical decode of the
//! standard (F.2.2.3).
//!
//! The reader never trusts the stream: bytes past a marker or past the end
//! of the file read as zeros, and a scan that consumed any of those zeros
//! is reported as truncated ([`BitReader::overran`]) rather than decoded
//! into a grey-padded picture. Table definitions are checked as the
//! standard requires (no more than 256 symbols, no code that overflows its
//! length), so no index taken from the stream can leave a table.

use std::fmt;

/// Bits looked up at once. 2048 four-byte entries: two AC tables and two
/// DC tables stay well inside the first-level cache.
pub(crate) const FAST_BITS: u32 = 11;
const FAST_SIZE: usize = 1 << FAST_BITS;
/// Bits looked up at once when stepping over AC coefficients (1/8 scale):
/// two or three of a photograph's coefficients. Two-byte entries: 8 KB per
/// AC table (13 and 14 bits measured no faster).
pub(crate) const SKIP_BITS: u32 = 12;
const SKIP_SIZE: usize = 1 << SKIP_BITS;
/// In a skip entry: the coefficients end with an end-of-block code.
pub(crate) const SKIP_END: u16 = 1 << 15;

/// A stream that breaks the rules of a scan (an impossible code, a
/// restart marker out of sequence). Turned into `corrupt_image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corrupt(pub String);

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn corrupt(message: impl Into<String>) -> Corrupt {
    Corrupt(message.into())
}

/// Whether a table decodes DC differences (the symbol is a size) or AC
/// coefficients (the symbol is a run of zeros and a size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Dc,
    Ac,
}

/// A coefficient as one fast entry: `len` bits in all (code and
/// magnitude), a step of `advance` positions along the block (0: end of
/// block), and the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Symbol {
    /// Code and magnitude bits in one lookup.
    Whole { len: u32, advance: u32, value: i32 },
    /// The code only; its magnitude bits still follow.
    Code { len: u32, symbol: u8 },
    /// A code longer than [`FAST_BITS`], or no code at all.
    Slow,
}

/// One Huffman table, as defined by a DHT segment.
pub(crate) struct Huffman {
    /// `len | advance << 8 | value << 16` for whole entries (len != 0);
    /// `code_len << 8 | symbol << 16` for code-only entries; 0 otherwise.
    fast: Box<[u32; FAST_SIZE]>,
    /// AC tables: as many whole coefficients as the next [`SKIP_BITS`]
    /// bits hold, for stepping over them (1/8 scale): `len | advance << 4`,
    /// plus [`SKIP_END`] when they end with the end of the block. 0 where
    /// the first coefficient is not whole.
    skip: Box<[u16; SKIP_SIZE]>,
    /// The largest code of each length (1..=16), -1 where there is none.
    max_code: [i32; 17],
    /// Added to a code of each length to index `values`.
    offset: [i32; 17],
    values: Vec<u8>,
}

impl fmt::Debug for Huffman {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Huffman")
            .field("symbols", &self.values.len())
            .finish()
    }
}

/// A value of `size` magnitude bits `bits`, sign-extended (F.2.2.1).
fn extend(bits: u32, size: u32) -> i32 {
    if size == 0 {
        return 0;
    }
    let bits = bits as i32;
    if bits < 1 << (size - 1) {
        bits - (1 << size) + 1
    } else {
        bits
    }
}

impl Huffman {
    /// Builds a table from the 16 counts of codes of each length and the
    /// symbols in code order.
    pub(crate) fn new(class: Class, counts: &[u8; 16], values: &[u8]) -> Result<Self, Corrupt> {
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 || total != values.len() {
            return Err(corrupt("a Huffman table declares more than 256 codes"));
        }
        if class == Class::Dc && values.iter().any(|&s| s > 16) {
            return Err(corrupt("a DC Huffman table has a size over 16"));
        }
        let mut fast = Box::new([0u32; FAST_SIZE]);
        let mut max_code = [-1i32; 17];
        let mut offset = [0i32; 17];
        let (mut code, mut k) = (0i32, 0usize);
        for len in 1..=16u32 {
            let count = usize::from(counts[len as usize - 1]);
            offset[len as usize] = k as i32 - code;
            for &symbol in &values[k..k + count] {
                // More codes than fit in `len` bits is no prefix code, and
                // the code of all ones is reserved (as libjpeg checks).
                if code >= (1 << len) - 1 {
                    return Err(corrupt(
                        "a Huffman table has more codes than its lengths allow",
                    ));
                }
                if len <= FAST_BITS {
                    fill_fast(&mut fast, class, code as u32, len, symbol);
                }
                code += 1;
            }
            k += count;
            if count > 0 {
                max_code[len as usize] = code - 1;
            }
            code <<= 1;
        }
        let skip = skip_table(class, &fast);
        Ok(Self {
            fast,
            skip,
            max_code,
            offset,
            values: values.to_vec(),
        })
    }

    /// The skip entry of the next [`SKIP_BITS`] bits (see `skip`).
    #[inline(always)]
    pub(crate) fn skip(&self, peek: usize) -> u16 {
        self.skip[peek & (SKIP_SIZE - 1)]
    }

    /// What the next [`FAST_BITS`] bits of `peek` begin with.
    #[inline(always)]
    pub(crate) fn lookup(&self, peek: usize) -> Symbol {
        let e = self.fast[peek & (FAST_SIZE - 1)];
        let len = e & 0xFF;
        if len != 0 {
            Symbol::Whole {
                len,
                advance: (e >> 8) & 0xFF,
                value: i32::from((e >> 16) as u16 as i16),
            }
        } else if e != 0 {
            Symbol::Code {
                len: (e >> 8) & 0xFF,
                symbol: (e >> 16) as u8,
            }
        } else {
            Symbol::Slow
        }
    }
}

impl Huffman {
    /// The symbol the 16 bits at the top of `bits` start with, and its
    /// code length.
    #[cold]
    fn slow(&self, bits: u64) -> Result<(u8, u32), Corrupt> {
        // Shorter codes all have fast entries.
        for len in FAST_BITS + 1..=16 {
            let code = (bits >> (64 - len)) as i32;
            if code <= self.max_code[len as usize] {
                let index = code + self.offset[len as usize];
                return usize::try_from(index)
                    .ok()
                    .and_then(|i| self.values.get(i).copied())
                    .map(|symbol| (symbol, len))
                    .ok_or_else(|| corrupt("a Huffman code points outside its table"));
            }
        }
        Err(corrupt("the scan holds a code that is in no Huffman table"))
    }
}

/// For each run of [`SKIP_BITS`] bits, the whole AC coefficients it
/// starts with, up to and including an end of block. Each entry only
/// depends on the bits its codes span, as the single-code entries do.
fn skip_table(class: Class, fast: &[u32; FAST_SIZE]) -> Box<[u16; SKIP_SIZE]> {
    let mut skip = Box::new([0u16; SKIP_SIZE]);
    if class == Class::Dc {
        return skip;
    }
    for (bits, entry) in skip.iter_mut().enumerate() {
        let (mut used, mut advance, mut end) = (0u32, 0u32, 0u16);
        while used < SKIP_BITS {
            let rest = (bits << used) & (SKIP_SIZE - 1);
            let e = fast[rest >> (SKIP_BITS - FAST_BITS)];
            let len = e & 0xFF;
            if len == 0 || len > SKIP_BITS - used {
                break;
            }
            used += len;
            let step = (e >> 8) & 0xFF;
            if step == 0 {
                end = SKIP_END;
                break;
            }
            advance += step;
            if advance >= 64 {
                break;
            }
        }
        if used > 0 {
            *entry = (used | advance.min(64) << 4) as u16 | end;
        }
    }
    skip
}

/// Fills the entries of one code of `len` bits: whole where the code and
/// its magnitude bits fit in [`FAST_BITS`], the code alone otherwise.
fn fill_fast(fast: &mut [u32; FAST_SIZE], class: Class, code: u32, len: u32, symbol: u8) {
    let (advance, size) = match class {
        Class::Dc => (1, u32::from(symbol)),
        Class::Ac => {
            let (run, size) = (u32::from(symbol >> 4), u32::from(symbol & 15));
            // EOB (and any other zero-size symbol but ZRL) ends the block,
            // as libjpeg reads it; ZRL steps over sixteen zeros.
            let advance = match (run, size) {
                (15, 0) => 16,
                (_, 0) => 0,
                _ => run + 1,
            };
            (advance, size)
        }
    };
    let spare = FAST_BITS - len;
    let first = (code << spare) as usize;
    for (i, entry) in fast[first..first + (1 << spare)].iter_mut().enumerate() {
        *entry = if len + size <= FAST_BITS {
            let bits = (i as u32 >> (spare - size)) & ((1 << size) - 1);
            let value = extend(bits, size) as i16 as u16;
            (len + size) | advance << 8 | u32::from(value) << 16
        } else {
            len << 8 | u32::from(symbol) << 16
        };
    }
}

/// Up to `want` bytes of entropy-coded data from `pos`, unstuffed,
/// left-aligned in a word; stops in front of a marker or at the end.
/// Returns the word, the bytes in it and the new position. Kept apart from
/// the reader (no `&mut self`) so the reader's state stays in registers.
#[cold]
fn next_bytes(data: &[u8], mut pos: usize, want: u32) -> (u64, u32, usize) {
    let (mut word, mut got) = (0u64, 0u32);
    while got < want {
        let byte = match (data.get(pos), data.get(pos + 1)) {
            (Some(0xFF), Some(0x00)) => {
                pos += 2;
                0xFF
            }
            // A marker (or FF fill before one), or the end.
            (Some(0xFF), _) | (None, _) => break,
            (Some(&b), _) => {
                pos += 1;
                b
            }
        };
        word |= u64::from(byte) << (56 - 8 * got);
        got += 1;
    }
    (word, got, pos)
}

/// Reads the entropy-coded bytes of a scan, most significant bit first,
/// unstuffing `FF 00` and stopping in front of any marker. `Copy`, so a
/// block is decoded on a local copy that lives in registers.
#[derive(Clone, Copy)]
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    /// The next bits, left-aligned; the bits below `nbits` are zero.
    bits: u64,
    nbits: u32,
    /// Zero bits appended after a marker or the end of the data.
    padding: u32,
    at_marker: bool,
}

impl<'a> BitReader<'a> {
    /// A reader of `data` from `pos`.
    pub(crate) fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            bits: 0,
            nbits: 0,
            padding: 0,
            at_marker: false,
        }
    }

    /// Where the unread bytes start: at the marker that ended the data, if
    /// the reader reached one.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Bits available without a refill.
    #[inline(always)]
    pub(crate) fn nbits(&self) -> u32 {
        self.nbits
    }

    /// Whether the decoder has used bits that are not in the file: the
    /// scan is truncated (or its codes are garbage).
    pub(crate) fn overran(&self) -> bool {
        self.padding > self.nbits
    }

    /// Makes at least 57 bits available.
    #[inline(always)]
    pub(crate) fn refill(&mut self) {
        if self.nbits > 56 {
            return;
        }
        if !self.at_marker
            && let Some(chunk) = self.data.get(self.pos..self.pos + 8)
            && let Ok(chunk) = <[u8; 8]>::try_from(chunk)
        {
            let word = u64::from_be_bytes(chunk);
            // Eight bytes at once when none of them is FF (stuffing or a
            // marker): the common case in any photograph.
            let inverted = !word;
            let has_ff =
                inverted.wrapping_sub(0x0101_0101_0101_0101) & !inverted & 0x8080_8080_8080_8080;
            if has_ff == 0 {
                let take = (64 - self.nbits) / 8;
                self.bits |= (word >> (64 - 8 * take)) << (64 - self.nbits - 8 * take);
                self.nbits += 8 * take;
                self.pos += take as usize;
                return;
            }
        }
        self.refill_slowly();
    }

    #[inline(always)]
    fn refill_slowly(&mut self) {
        let (chunk, bytes, pos) = if self.at_marker {
            (0, 0, self.pos)
        } else {
            next_bytes(self.data, self.pos, (64 - self.nbits) / 8)
        };
        self.bits |= chunk >> self.nbits;
        self.nbits += 8 * bytes;
        self.pos = pos;
        if self.nbits <= 56 {
            // A marker or the end: zeros from here on, counted.
            self.at_marker = true;
            let pad = (64 - self.nbits) / 8 * 8;
            self.padding += pad;
            self.nbits += pad;
        }
    }

    /// The next [`FAST_BITS`] bits, without consuming them. Needs
    /// [`Self::refill`] first.
    #[inline(always)]
    pub(crate) fn peek(&self) -> usize {
        (self.bits >> (64 - FAST_BITS)) as usize
    }

    /// The next [`SKIP_BITS`] bits, without consuming them.
    #[inline(always)]
    pub(crate) fn peek_skip(&self) -> usize {
        (self.bits >> (64 - SKIP_BITS)) as usize
    }

    /// Drops `n` (at most 32) bits. Needs as many available.
    #[inline(always)]
    pub(crate) fn consume(&mut self, n: u32) {
        self.bits <<= n;
        self.nbits -= n;
    }

    /// The next `n` (at most 16) bits as a number.
    #[inline(always)]
    pub(crate) fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        if self.nbits < n {
            self.refill();
        }
        let v = (self.bits >> (64 - n)) as u32;
        self.consume(n);
        v
    }

    /// `size` magnitude bits, sign-extended.
    #[inline(always)]
    pub(crate) fn value(&mut self, size: u32) -> i32 {
        extend(self.bits(size), size)
    }

    /// Decodes a symbol the fast table could not: the canonical way, one
    /// length at a time. Needs [`Self::refill`] first.
    #[inline(always)]
    pub(crate) fn slow_symbol(&mut self, table: &Huffman) -> Result<u8, Corrupt> {
        let (symbol, len) = table.slow(self.bits)?;
        self.consume(len);
        Ok(symbol)
    }

    /// Ends a restart interval: drops the bits left in the last byte and
    /// reads the restart marker that must come next, `RST{expected}`.
    /// Bytes in front of it are skipped, as libjpeg does.
    /// Taken and returned by value, like the rest of the reader, so a
    /// decoding loop can keep it in registers.
    pub(crate) fn restart(self, expected: u8) -> Result<Self, Corrupt> {
        if self.overran() {
            return Err(corrupt("truncated"));
        }
        let mut pos = self.pos;
        let Some(marker) = super::markers::next_marker(self.data, &mut pos) else {
            return Err(corrupt("truncated"));
        };
        if marker != 0xD0 + expected {
            return Err(corrupt(format!(
                "found marker {marker:02X} where restart marker RST{expected} was expected"
            )));
        }
        Ok(Self::new(self.data, pos))
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_are_sign_extended_from_their_magnitude_bits() {
        assert_eq!(extend(0, 1), -1);
        assert_eq!(extend(1, 1), 1);
        assert_eq!(extend(0b010, 3), -5);
        assert_eq!(extend(0b101, 3), 5);
        assert_eq!(extend(0, 0), 0);
    }

    #[test]
    fn tables_that_are_no_prefix_code_are_refused() {
        // Three codes of one bit.
        let mut counts = [0u8; 16];
        counts[0] = 3;
        assert!(Huffman::new(Class::Ac, &counts, &[1, 2, 3]).is_err());
        // Two codes of one bit: the second would be all ones.
        counts[0] = 2;
        assert!(Huffman::new(Class::Ac, &counts, &[1, 2]).is_err());
        // Counts and symbols disagree.
        counts[0] = 1;
        assert!(Huffman::new(Class::Ac, &counts, &[1, 2]).is_err());
        // A DC size the standard does not have.
        assert!(Huffman::new(Class::Dc, &counts, &[17]).is_err());
        assert!(Huffman::new(Class::Dc, &counts, &[5]).is_ok());
    }

    #[test]
    fn codes_and_their_bits_are_read_in_one_step_or_the_slow_way() {
        // Codes: 0x01 -> "0", 0x00 (EOB) -> "10", 0xF0 (ZRL) -> "110",
        // 0x0A -> "1110".
        let mut counts = [0u8; 16];
        counts[..4].copy_from_slice(&[1, 1, 1, 1]);
        let table = Huffman::new(Class::Ac, &counts, &[0x01, 0x00, 0xF0, 0x0A]).unwrap();
        // "0" then magnitude "1": value 1, one position on.
        let data = [0b0110_1110, 0b1111_1111, 0x00, 0b1100_0000];
        let mut r = BitReader::new(&data, 0);
        r.refill();
        assert_eq!(
            table.lookup(r.peek()),
            Symbol::Whole {
                len: 2,
                advance: 1,
                value: 1
            }
        );
        r.consume(2);
        assert_eq!(
            table.lookup(r.peek()),
            Symbol::Whole {
                len: 2,
                advance: 0,
                value: 0
            }
        );
        r.consume(2);
        // "1110" then ten magnitude bits do not fit in eleven.
        assert_eq!(
            table.lookup(r.peek()),
            Symbol::Code {
                len: 4,
                symbol: 0x0A
            }
        );
        r.consume(4);
        // The stuffed FF 00 reads as FF.
        assert_eq!(r.value(10), 0b11_1111_1111);
        assert!(!r.overran());
        assert_eq!(r.bits(6), 0);
        // Past the end the reader pads with zeros and says so once they
        // are used.
        assert_eq!(r.bits(16), 0);
        assert!(r.overran());
    }

    #[test]
    fn a_code_in_no_table_is_corrupt() {
        let mut counts = [0u8; 16];
        counts[15] = 1;
        let table = Huffman::new(Class::Dc, &counts, &[3]).unwrap();
        assert_eq!(table.lookup(0x7FF), Symbol::Slow);
        let data = [0xFE, 0xFF, 0x00, 0xFF, 0x00];
        let mut r = BitReader::new(&data, 0);
        r.refill();
        assert!(r.slow_symbol(&table).is_err());
        let data = [0x00, 0x00];
        let mut r = BitReader::new(&data, 0);
        r.refill();
        assert_eq!(r.slow_symbol(&table).unwrap(), 3);
    }
}
