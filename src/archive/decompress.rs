//! Decompression chosen by the stream's magic bytes, never by the file name.

use super::pipe::PipeWriter;
use anyhow::{bail, Context, Result};
use std::io::{self, BufRead, Read};

/// The most memory the xz decoder may take: 128 MiB, as much as the largest zstd window
/// accepted (frames.rs) and twice the dictionary of `xz -9`. The dictionary size is the
/// archive's to choose: without a bound a small archive could ask for gigabytes.
const XZ_MEMLIMIT: u64 = 128 << 20;

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

/// Decompress `r`, of `format` (see [`detect`]), into `out`. All frames/members are read, and
/// anything after the last one that is not another frame is an error. `verified`: the
/// stream's bytes are checked against a sha256 before anything unpacked from them is used, so
/// zstd's own checksum of each frame adds nothing and is not computed (it costs 3 % of an
/// unpack).
pub fn copy(format: Format, r: impl BufRead, out: &mut PipeWriter, verified: bool) -> Result<()> {
    let mut d: Box<dyn Read + '_> = match format {
        Format::Zstd => {
            let frames = super::frames::decode(r, out, verified)?;
            log::debug!("zstd frames: {frames:?}");
            return Ok(());
        }
        Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Format::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMLIMIT,
                liblzma::stream::CONCATENATED,
            )
            .context("cannot make an xz decompressor")?;
            let mut d = liblzma::bufread::XzDecoder::new_stream(r, stream);
            out.copy_from(&mut d).map_err(xz_error)?;
            return Ok(());
        }
        Format::Tar => Box::new(r),
    };
    out.copy_from(&mut d)?;
    Ok(())
}

/// An xz decoding error, the memory limit said in words.
fn xz_error(e: io::Error) -> anyhow::Error {
    let inner = e.get_ref().and_then(|i| i.downcast_ref());
    if inner == Some(&liblzma::stream::Error::MemLimit) {
        anyhow::anyhow!(
            "the xz stream needs more than {} MiB of memory to decompress (its dictionary is \
             too large): recompress it with a dictionary of 64 MiB or less (xz -9 or lower)",
            XZ_MEMLIMIT >> 20
        )
    } else {
        anyhow::Error::new(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::pipe::through_pipe;
    use std::io::Write;

    fn decompressed(compressed: &[u8]) -> Result<(Format, Vec<u8>)> {
        let format = detect(compressed)?;
        let data = through_pipe(1 << 20, |w| copy(format, compressed, w, false))?;
        Ok((format, data))
    }

    fn roundtrip(data: &[u8], compressed: Vec<u8>, want: Format) {
        assert_eq!(decompressed(&compressed).unwrap(), (want, data.to_vec()));
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
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        g.write_all(&data).unwrap();
        for z in [zstd::encode_all(&data[..], 3).unwrap(), g.finish().unwrap()] {
            assert!(decompressed(&z[..z.len() - 1]).is_err());
            let mut g = z.clone();
            g.extend_from_slice(b"garbage!");
            assert!(decompressed(&g).is_err());
        }
        assert!(detect(b"PK\x03\x04").is_err());
    }

    #[test]
    fn an_xz_dictionary_over_the_memory_limit_is_refused() {
        let data = sample();
        let mut opts = liblzma::stream::LzmaOptions::new_preset(0).unwrap();
        opts.dict_size(256 << 20);
        let mut filters = liblzma::stream::Filters::new();
        filters.lzma2(&opts);
        let stream =
            liblzma::stream::Stream::new_stream_encoder(&filters, liblzma::stream::Check::Crc64)
                .unwrap();
        let mut x = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        x.write_all(&data).unwrap();
        let e = decompressed(&x.finish().unwrap()).unwrap_err().to_string();
        assert!(e.contains("more than 128 MiB of memory"), "{e}");
    }
}
