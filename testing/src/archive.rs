//! Test content built in code, never committed as blobs: zip archives (stored, deflated bombs,
//! ZipCrypto-encrypted, nested), images and PDFs that push clamd to its limits. Shared by the
//! worker's bad-input suite and the operator's clamd-limits suite; builds bytes only, no I/O.

use std::io::Write as _;

/// One member of a zip archive, as written by [`zip`].
pub struct ZipEntry {
    pub name: String,
    /// Bytes as stored in the archive: compressed and/or encrypted.
    pub stored: Vec<u8>,
    /// CRC-32 of the content (uncompressed, unencrypted).
    pub crc: u32,
    /// Size of the content (uncompressed).
    pub size: u32,
    /// 0 stored, 8 deflated.
    pub method: u16,
    /// General purpose flags; bit 0: encrypted.
    pub flags: u16,
}

impl ZipEntry {
    /// An entry stored as is.
    pub fn stored(name: &str, data: &[u8]) -> Self {
        Self {
            name: name.into(),
            stored: data.to_vec(),
            crc: crc32fast::hash(data),
            size: data.len() as u32,
            method: 0,
            flags: 0,
        }
    }

    /// A stored entry encrypted with traditional PKWARE encryption (ZipCrypto).
    pub fn zipcrypto(name: &str, data: &[u8], password: &[u8]) -> Self {
        let crc = crc32fast::hash(data);
        let mut keys = ZipCryptoKeys::new(password);
        // 11 arbitrary bytes, then the CRC's high byte that a reader checks the password against.
        let mut header: Vec<u8> = (0..11u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
        header.push((crc >> 24) as u8);
        let stored = header.iter().chain(data).map(|&byte| keys.encrypt(byte)).collect();
        Self { name: name.into(), stored, crc, size: data.len() as u32, method: 0, flags: 1 }
    }

    /// A deflated entry of `mib` MiB of zeros, built without inflating it here: one MiB is
    /// deflated once and its (byte-aligned, non-final) blocks are repeated, since every block of
    /// zeros only refers back to zeros.
    pub fn zeros_bomb(name: &str, mib: u32) -> Self {
        let chunk = vec![0u8; 1024 * 1024];
        let mut compressor = flate2::Compress::new(flate2::Compression::best(), false);
        let mut block = Vec::with_capacity(64 * 1024);
        compressor.compress_vec(&chunk, &mut block, flate2::FlushCompress::Sync).unwrap();
        assert_eq!(compressor.total_in(), chunk.len() as u64, "one call deflates the whole MiB");
        let mut stored = Vec::with_capacity(block.len() * mib as usize + 2);
        let mut one = crc32fast::Hasher::new();
        one.update(&chunk);
        let mut crc = crc32fast::Hasher::new();
        for _ in 0..mib {
            stored.extend_from_slice(&block);
            crc.combine(&one);
        }
        // An empty final block with fixed Huffman codes.
        stored.extend_from_slice(&[0x03, 0x00]);
        Self { name: name.into(), stored, crc: crc.finalize(), size: mib * 1024 * 1024, method: 8, flags: 0 }
    }
}

struct ZipCryptoKeys([u32; 3]);

impl ZipCryptoKeys {
    fn new(password: &[u8]) -> Self {
        let mut keys = Self([0x1234_5678, 0x2345_6789, 0x3456_7890]);
        for &byte in password {
            keys.update(byte);
        }
        keys
    }

    fn crc_byte(crc: u32, byte: u8) -> u32 {
        let mut c = (crc ^ u32::from(byte)) & 0xff;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
        c ^ (crc >> 8)
    }

    fn update(&mut self, byte: u8) {
        self.0[0] = Self::crc_byte(self.0[0], byte);
        self.0[1] = self.0[1].wrapping_add(self.0[0] & 0xff).wrapping_mul(134_775_813).wrapping_add(1);
        self.0[2] = Self::crc_byte(self.0[2], (self.0[1] >> 24) as u8);
    }

    fn encrypt(&mut self, plain: u8) -> u8 {
        let temp = (self.0[2] | 2) & 0xffff;
        let cipher = plain ^ ((temp.wrapping_mul(temp ^ 1) >> 8) & 0xff) as u8;
        self.update(plain);
        cipher
    }
}

/// A zip archive of `entries`, in order, with a central directory.
pub fn zip(entries: &[ZipEntry]) -> Vec<u8> {
    const DOS_DATE: u16 = 0x0021; // 1980-01-01
    let mut out = Vec::new();
    let mut central = Vec::new();
    for entry in entries {
        let offset = out.len() as u32;
        let name = entry.name.as_bytes();
        out.write_all(&0x0403_4b50u32.to_le_bytes()).unwrap();
        for field in [20u16, entry.flags, entry.method, 0, DOS_DATE] {
            out.write_all(&field.to_le_bytes()).unwrap();
        }
        for field in [entry.crc, entry.stored.len() as u32, entry.size] {
            out.write_all(&field.to_le_bytes()).unwrap();
        }
        out.write_all(&(name.len() as u16).to_le_bytes()).unwrap();
        out.write_all(&0u16.to_le_bytes()).unwrap();
        out.write_all(name).unwrap();
        out.write_all(&entry.stored).unwrap();

        central.write_all(&0x0201_4b50u32.to_le_bytes()).unwrap();
        for field in [20u16, 20, entry.flags, entry.method, 0, DOS_DATE] {
            central.write_all(&field.to_le_bytes()).unwrap();
        }
        for field in [entry.crc, entry.stored.len() as u32, entry.size] {
            central.write_all(&field.to_le_bytes()).unwrap();
        }
        for field in [name.len() as u16, 0, 0, 0, 0] {
            central.write_all(&field.to_le_bytes()).unwrap();
        }
        central.write_all(&0u32.to_le_bytes()).unwrap();
        central.write_all(&offset.to_le_bytes()).unwrap();
        central.write_all(name).unwrap();
    }
    let central_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.write_all(&0x0605_4b50u32.to_le_bytes()).unwrap();
    for field in [0u16, 0, entries.len() as u16, entries.len() as u16] {
        out.write_all(&field.to_le_bytes()).unwrap();
    }
    out.write_all(&(central.len() as u32).to_le_bytes()).unwrap();
    out.write_all(&central_offset.to_le_bytes()).unwrap();
    out.write_all(&0u16.to_le_bytes()).unwrap();
    out
}

/// A deflated entry of `data`.
impl ZipEntry {
    pub fn deflated(name: &str, data: &[u8]) -> Self {
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).expect("deflate into memory");
        let stored = encoder.finish().expect("deflate into memory");
        Self { name: name.into(), stored, crc: crc32fast::hash(data), size: data.len() as u32, method: 8, flags: 0 }
    }
}

/// `archive` wrapped in `levels` more zip archives, one inside the next.
pub fn nested_zip(archive: Vec<u8>, levels: usize) -> Vec<u8> {
    let mut nested = archive;
    for level in 0..levels {
        nested = zip(&[ZipEntry::stored(&format!("level-{level}.zip"), &nested)]);
    }
    nested
}

/// An 8-bit greyscale PNG of `width` x `height` black pixels, but for `seed` written into the
/// first row so that images of different seeds differ (clamd caches the verdicts of files it has
/// seen by their hash). It compresses to about a thousandth of its pixel count, while decoding
/// it (clamd 1.x computes a fuzzy hash of every image it meets) costs time in proportion to the
/// pixels. Built without compressing every row: one batch of zero rows is deflated once and its
/// self-contained blocks repeated, as in [`ZipEntry::zeros_bomb`].
pub fn png(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let row_len = width as usize + 1; // filter byte 0, then the pixels
    let mut first_row = vec![0u8; row_len];
    let seed_bytes = seed.to_be_bytes();
    let shown = seed_bytes.len().min(width as usize);
    first_row[1..=shown].copy_from_slice(&seed_bytes[..shown]);
    let zero_rows = height.saturating_sub(1) as usize;
    let batch_rows = (1024 * 1024 / row_len).clamp(1, zero_rows.max(1));
    let (batches, rest_rows) = (zero_rows / batch_rows, zero_rows % batch_rows);

    let mut data = vec![0x78, 0xda]; // zlib header: deflate, 32 KiB window, best compression
    data.extend_from_slice(&deflate_sync(&first_row));
    let batch = deflate_sync(&vec![0u8; batch_rows * row_len]);
    for _ in 0..batches {
        data.extend_from_slice(&batch);
    }
    if rest_rows > 0 {
        data.extend_from_slice(&deflate_sync(&vec![0u8; rest_rows * row_len]));
    }
    data.extend_from_slice(&[0x03, 0x00]); // an empty final block with fixed Huffman codes
    let mut adler = Adler32::default();
    adler.update(&first_row);
    adler.zeros(zero_rows as u64 * row_len as u64);
    data.extend_from_slice(&adler.value().to_be_bytes());

    let mut header = Vec::with_capacity(13);
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 0, 0, 0, 0]); // 8 bits, greyscale, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, body) in [(&b"IHDR"[..], header.as_slice()), (b"IDAT", &data), (b"IEND", &[])] {
        png.extend_from_slice(&(body.len() as u32).to_be_bytes());
        png.extend_from_slice(kind);
        png.extend_from_slice(body);
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(body);
        png.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    png
}

/// Raw deflate blocks of `data`, ended by a sync flush (byte-aligned, not final) and referring to
/// nothing before them, so they can follow any other such blocks.
fn deflate_sync(data: &[u8]) -> Vec<u8> {
    let mut compressor = flate2::Compress::new(flate2::Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() / 512 + 64);
    loop {
        out.reserve(64 * 1024);
        let consumed = compressor.total_in() as usize;
        compressor.compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Sync).expect("deflate into memory");
        // Done once all the input is in and the flush fitted (room was left over). Another round
        // only adds an empty stored block, which is harmless.
        if compressor.total_in() as usize == data.len() && out.len() < out.capacity() {
            return out;
        }
    }
}

/// Adler-32 (zlib's checksum), with runs of zeros added in constant time.
struct Adler32 {
    a: u64,
    b: u64,
}

impl Default for Adler32 {
    fn default() -> Self {
        Self { a: 1, b: 0 }
    }
}

impl Adler32 {
    const MOD: u64 = 65_521;

    fn update(&mut self, data: &[u8]) {
        for &byte in data {
            self.a = (self.a + u64::from(byte)) % Self::MOD;
            self.b = (self.b + self.a) % Self::MOD;
        }
    }

    /// `count` zero bytes: `a` stays, `b` grows by `a` for each.
    fn zeros(&mut self, count: u64) {
        self.b = (self.b + (count % Self::MOD) * self.a) % Self::MOD;
    }

    fn value(&self) -> u32 {
        ((self.b << 16) | self.a) as u32
    }
}

/// A one-page PDF encrypted with the standard security handler under a user password (its `/U`
/// value matches no empty password), so that no reader, clamd included, can decrypt it unasked.
pub fn encrypted_pdf() -> Vec<u8> {
    let objects: [&[u8]; 5] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /Contents 4 0 R >>",
        b"<< /Length 16 >>\nstream\n\x8f\x13\x52\xe1\x07\x9a\x44\xd0\x3b\xc8\x61\x2e\xf5\x90\x0c\xa7\nendstream",
        b"<< /Filter /Standard /V 1 /R 2 /O <1111111111111111111111111111111111111111111111111111111111111111> \
          /U <2222222222222222222222222222222222222222222222222222222222222222> /P -4 >>",
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (number, object) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        writeln!(pdf, "{} 0 obj", number + 1).unwrap();
        pdf.extend_from_slice(object);
        pdf.extend_from_slice(b"\nendobj\n");
    }
    let xref = pdf.len();
    write!(pdf, "xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).unwrap();
    for offset in offsets {
        writeln!(pdf, "{offset:010} 00000 n ").unwrap();
    }
    let id = "33".repeat(16);
    write!(
        pdf,
        "trailer\n<< /Size {} /Root 1 0 R /Encrypt 5 0 R /ID [<{id}> <{id}>] >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    )
    .unwrap();
    pdf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bomb_builder_writes_a_deflate_stream_that_inflates_to_its_declared_size() {
        let entry = ZipEntry::zeros_bomb("z", 3);
        let mut inflated = Vec::new();
        let mut decoder = flate2::read::DeflateDecoder::new(entry.stored.as_slice());
        std::io::Read::read_to_end(&mut decoder, &mut inflated).unwrap();
        assert_eq!(inflated.len(), 3 * 1024 * 1024);
        assert!(inflated.iter().all(|&byte| byte == 0));
        assert_eq!(crc32fast::hash(&inflated), entry.crc);
    }

    #[test]
    fn a_deflated_entry_inflates_to_its_content() {
        let entry = ZipEntry::deflated("d", b"hello hello hello hello");
        let mut inflated = Vec::new();
        let mut decoder = flate2::read::DeflateDecoder::new(entry.stored.as_slice());
        std::io::Read::read_to_end(&mut decoder, &mut inflated).unwrap();
        assert_eq!(inflated, b"hello hello hello hello");
        assert_eq!(crc32fast::hash(&inflated), entry.crc);
    }

    #[test]
    fn pngs_decode_to_their_pixels_and_differ_by_seed() {
        let image = png(300, 200, 7);
        assert!(image.starts_with(b"\x89PNG\r\n\x1a\n"));
        let data_length = u32::from_be_bytes(image[33..37].try_into().unwrap()) as usize;
        assert_eq!(&image[37..41], b"IDAT");
        let mut pixels = Vec::new();
        let mut decoder = flate2::read::ZlibDecoder::new(&image[41..41 + data_length]);
        std::io::Read::read_to_end(&mut decoder, &mut pixels).expect("a valid zlib stream, checksum included");
        assert_eq!(pixels.len(), 301 * 200, "a filter byte and 300 pixels per row");
        assert_eq!(&pixels[1..5], &7u32.to_be_bytes());
        assert!(pixels[5..].iter().all(|&byte| byte == 0));
        assert_ne!(png(300, 200, 8), image);
        // Large ones too: the batches of zero rows are repeated, not compressed again.
        let large = png(2000, 2000, 1);
        assert!(large.len() < 8 * 1024, "{} bytes", large.len());
        let data_length = u32::from_be_bytes(large[33..37].try_into().unwrap()) as usize;
        let mut pixels = Vec::new();
        let mut decoder = flate2::read::ZlibDecoder::new(&large[41..41 + data_length]);
        std::io::Read::read_to_end(&mut decoder, &mut pixels).expect("a valid zlib stream, checksum included");
        assert_eq!(pixels.len(), 2001 * 2000);
        let mut adler = Adler32::default();
        adler.update(&pixels);
        let mut fast = Adler32::default();
        fast.update(&pixels[..2001]);
        fast.zeros(2001 * 1999);
        assert_eq!(fast.value(), adler.value());
    }

    #[test]
    fn the_encrypted_pdf_has_an_xref_pointing_at_its_objects() {
        let pdf = encrypted_pdf();
        let find = |needle: &[u8], from: usize| {
            from + pdf[from..].windows(needle.len()).position(|window| window == needle).expect("present")
        };
        let after_startxref = find(b"startxref\n", 0) + b"startxref\n".len();
        let xref: usize =
            std::str::from_utf8(&pdf[after_startxref..find(b"\n", after_startxref)]).unwrap().parse().unwrap();
        assert!(pdf[xref..].starts_with(b"xref\n0 6\n0000000000 65535 f \n"));
        let first_entry = xref + b"xref\n0 6\n0000000000 65535 f \n".len();
        let first_object: usize = std::str::from_utf8(&pdf[first_entry..first_entry + 10]).unwrap().parse().unwrap();
        assert!(pdf[first_object..].starts_with(b"1 0 obj"));
        find(b"/Encrypt 5 0 R", 0);
    }
}
