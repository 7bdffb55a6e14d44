//! Decompression chosen by the stream's magic bytes, never by the file name.

use anyhow::{bail, Result};
use std::io::{BufRead, Read};

/// The compression of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Zstandard (`28 b5 2f fd`).
    Zstd,
    /// gzip (`1f 8b`).
    Gzip,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// An uncompressed tar (`ustar` at offset 257).
    Tar,
}

/// Recognize the format from the first bytes of the stream.
pub fn detect(head: &[u8]) -> Result<Format> {
    Ok(if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Format::Xz
    } else if head.get(257..262) == Some(b"ustar") {
        Format::Tar
    } else if head.starts_with(super::crypt::MAGIC) {
        bail!("the archive is age-encrypted: opt.archive.identity_file names the key to open it")
    } else {
        let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        bail!(
            "not a zstd, gzip or xz compressed tar (it starts with {})",
            shown.join(" ")
        )
    })
}

/// A reader of the decompressed bytes of `r`. All frames/members are read, and anything
/// after the last one that is not another frame is an error. `verified`: the stream's bytes
/// are checked against a sha256 before anything unpacked from them is used, so zstd's own
/// checksum of each frame adds nothing and is not computed (it costs 3 % of an unpack).
pub fn reader<'a>(
    mut r: impl BufRead + Send + 'a,
    verified: bool,
) -> Result<(Format, Box<dyn Read + Send + 'a>)> {
    let head = r.fill_buf()?;
    let format = detect(head)?;
    let out: Box<dyn Read + Send> = match format {
        Format::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(r)?;
            // Accept the long windows `zstd --long` makes (up to 128 MiB) rather than fail;
            // olboot's own archives use small ones.
            d.window_log_max(27)?;
            d.set_parameter(zstd::zstd_safe::DParameter::ForceIgnoreChecksum(verified))?;
            Box::new(d)
        }
        Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Format::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r)),
        Format::Tar => Box::new(r),
    };
    Ok((format, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(data: &[u8], compressed: Vec<u8>, want: Format) {
        let (f, mut r) = reader(&compressed[..], false).unwrap();
        assert_eq!(f, want);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    fn sample() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_cksum();
        b.append_data(&mut h, "a", &b"hello"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn all_formats_by_magic() {
        let data = sample();
        roundtrip(&data, zstd::encode_all(&data[..], 3).unwrap(), Format::Zstd);
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        g.write_all(&data).unwrap();
        roundtrip(&data, g.finish().unwrap(), Format::Gzip);
        let mut x = liblzma::write::XzEncoder::new(Vec::new(), 1);
        x.write_all(&data).unwrap();
        roundtrip(&data, x.finish().unwrap(), Format::Xz);
        roundtrip(&data, data.clone(), Format::Tar);
    }

    #[test]
    fn truncated_and_garbage_tails_fail() {
        let data = sample();
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let mut out = Vec::new();
        assert!(reader(&z[..z.len() - 1], false)
            .unwrap()
            .1
            .read_to_end(&mut out)
            .is_err());
        let mut g = z.clone();
        g.extend_from_slice(b"garbage!");
        assert!(reader(&g[..], false)
            .unwrap()
            .1
            .read_to_end(&mut out)
            .is_err());
        assert!(detect(b"PK\x03\x04").is_err());
    }
}
