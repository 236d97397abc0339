//! The one PNG encoder of the fakes' images: 8-bit RGB, no interlace, one IDAT holding a
//! zlib stream of stored (uncompressed) deflate blocks (RFC 1950, RFC 1951 §3.2.4), with
//! the CRC-32 of each chunk and the Adler-32 of the zlib stream (PNG specification, ISO/IEC
//! 15948). Small, deterministic and decoded by every browser; no compression needed.

/// A PNG of `width` × `height` RGB pixels from `raw`: the scanlines as PNG filters them,
/// each a filter-type byte (0, none) and 3 bytes per pixel.
pub fn rgb(width: u32, height: u32, raw: &[u8]) -> Vec<u8> {
    debug_assert_eq!(raw.len(), (1 + 3 * width as usize) * height as usize);
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive filters, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib_stored(raw));
    chunk(&mut out, b"IEND", &[]);
    out
}

/// The length [`rgb`] gives for `width` × `height` pixels, without encoding them.
pub fn rgb_len(width: u32, height: u32) -> usize {
    let raw = (width as usize * 3 + 1) * height as usize;
    let idat = 2 + raw + 5 * raw.div_ceil(65_535).max(1) + 4;
    8 + (12 + 13) + (12 + idat) + 12
}

/// One chunk: length, type, data, CRC-32 of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream of stored deflate blocks (at most 65 535 bytes each; one empty final
/// block for no data).
pub fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// CRC-32 (IEEE 802.3, reflected), as PNG chunks and Go's `crc32.ChecksumIEEE` use it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Adler-32, the zlib trailer.
pub fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_their_reference_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(crc32(b""), 0);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        assert_eq!(adler32(b""), 1);
    }

    fn raw(width: u32, height: u32) -> Vec<u8> {
        let mut raw = Vec::new();
        for y in 0..height {
            raw.push(0);
            for x in 0..width {
                raw.extend_from_slice(&[x as u8, y as u8, (x ^ y) as u8]);
            }
        }
        raw
    }

    /// Walk the chunks: signature, IHDR with the size asked for, CRCs that hold, a zlib
    /// stream of stored blocks that gives back the scanlines, and their Adler-32.
    #[test]
    fn pngs_are_well_formed() {
        for (w, h) in [(1, 1), (16, 16), (40, 17), (200, 120)] {
            let raw = raw(w, h);
            let png = rgb(w, h, &raw);
            assert_eq!(png.len(), rgb_len(w, h), "{w}x{h}");
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            let mut at = 8;
            let mut chunks = Vec::new();
            while at < png.len() {
                let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
                let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
                assert_eq!(crc, crc32(&png[at + 4..at + 8 + len]));
                chunks.push((
                    png[at + 4..at + 8].to_vec(),
                    png[at + 8..at + 8 + len].to_vec(),
                ));
                at += 12 + len;
            }
            assert_eq!(at, png.len());
            let kinds: Vec<&[u8]> = chunks.iter().map(|(k, _)| &k[..]).collect();
            assert_eq!(kinds, vec![&b"IHDR"[..], b"IDAT", b"IEND"]);
            assert_eq!(
                &chunks[0].1[..8],
                &[w.to_be_bytes(), h.to_be_bytes()].concat()[..]
            );
            assert_eq!(&chunks[0].1[8..], &[8, 2, 0, 0, 0]);
            let z = &chunks[1].1;
            assert_eq!((u16::from(z[0]) << 8 | u16::from(z[1])) % 31, 0, "FCHECK");
            let (mut i, mut inflated) = (2, Vec::new());
            loop {
                let last = z[i] & 1 == 1;
                assert_eq!(z[i] >> 1, 0, "stored block");
                let len = u16::from_le_bytes([z[i + 1], z[i + 2]]);
                assert_eq!(len, !u16::from_le_bytes([z[i + 3], z[i + 4]]));
                inflated.extend_from_slice(&z[i + 5..i + 5 + len as usize]);
                i += 5 + len as usize;
                if last {
                    break;
                }
            }
            assert_eq!(inflated, raw);
            assert_eq!(&z[i..], &adler32(&raw).to_be_bytes());
        }
    }

    #[test]
    fn no_data_is_one_empty_final_block() {
        assert_eq!(
            zlib_stored(&[]),
            [0x78, 0x01, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 1]
        );
    }
}
