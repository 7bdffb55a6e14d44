//! age encryption of the archive: the key files, a decrypting reader for the opt pipeline and
//! an encrypting writer for `olboot pack`.
//!
//! Only X25519 keys (`AGE-SECRET-KEY-1…` / `age1…`, what `age-keygen` writes) are taken: no
//! passphrases, SSH keys or plugins, which would need a terminal or other programs at first
//! boot. age authenticates the stream per 64 KiB chunk, so a tampered chunk is found only when
//! it is reached: the pipeline's caller must treat everything unpacked before that as garbage
//! (it does: staging is renamed into place only after the whole stream was read).

use crate::secret::SecretFile;
use anyhow::{bail, Context, Result};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::str::FromStr;

/// How the age format begins: recognizing it gives a better error than "not compressed".
pub const MAGIC: &[u8] = b"age-encryption.org/";

/// The X25519 identities of an identity file. Never printed: its `Debug` names only the file.
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
    file: String,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities({}, {} keys)", self.file, self.keys.len())
    }
}

impl Identities {
    /// Parse the identities in `file` (one per line, `#` comments and blank lines skipped).
    pub fn parse(file: &SecretFile) -> Result<Identities> {
        let name = file.path().display().to_string();
        let mut keys = Vec::new();
        for (n, line) in file.text().lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The parser's error would not echo the line, but say nothing of it to be sure.
            let key = age::x25519::Identity::from_str(line).map_err(|_| {
                anyhow::anyhow!(
                    "{name}: line {}: not an age identity (AGE-SECRET-KEY-1…)",
                    n + 1
                )
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            bail!("{name}: no age identity (AGE-SECRET-KEY-1…) in the file");
        }
        Ok(Identities { keys, file: name })
    }

    /// A reader of the plaintext of the age stream `r`. Fails at once, before any plaintext,
    /// when `r` is not an age file or none of the identities opens it.
    pub fn decrypt<'a, R: Read + Send + 'a>(&self, r: R) -> Result<impl BufRead + Send + 'a> {
        let d = age::Decryptor::new(r).map_err(|e| match e {
            age::DecryptError::Io(e) => anyhow::Error::new(e).context("cannot read the archive"),
            e => anyhow::anyhow!("not an age-encrypted archive: {e}"),
        })?;
        let keys = self.keys.iter().map(|k| k as &dyn age::Identity);
        let plain = d.decrypt(keys).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => anyhow::anyhow!(
                "the archive is not encrypted to any identity in {}",
                self.file
            ),
            e => anyhow::anyhow!("cannot decrypt the archive with {}: {e}", self.file),
        })?;
        Ok(BufReader::with_capacity(256 * 1024, plain))
    }
}

/// Recipients to encrypt to: `age1…` public keys.
#[derive(Debug, Clone, Default)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    /// Add one `age1…` key; `from` says where it came from, for the error.
    pub fn add(&mut self, key: &str, from: &str) -> Result<()> {
        let r = age::x25519::Recipient::from_str(key.trim())
            .map_err(|e| anyhow::anyhow!("{from}: {key:?} is not an age recipient: {e}"))?;
        self.0.push(r);
        Ok(())
    }

    /// Add every key of a recipients file (`#` comments and blank lines skipped).
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let before = self.0.len();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                self.add(line, &format!("{}: line {}", path.display(), n + 1))?;
            }
        }
        if self.0.len() == before {
            bail!("{}: no age recipient (age1…) in the file", path.display());
        }
        Ok(())
    }

    /// Whether there is none (the archive is then written in the clear).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Wrap `out` in a writer that encrypts to every recipient; its
    /// [`Encrypting::finish`] writes the last chunk.
    pub fn encrypt<W: Write>(&self, out: W) -> Result<Encrypting<W>> {
        let keys = self.0.iter().map(|k| k as &dyn age::Recipient);
        let enc = age::Encryptor::with_recipients(keys).context("no age recipient")?;
        let w = enc
            .wrap_output(out)
            .context("cannot write the age header")?;
        Ok(Encrypting(w))
    }
}

/// A writer that age-encrypts what goes through it.
pub struct Encrypting<W: Write>(age::stream::StreamWriter<W>);

impl<W: Write> Encrypting<W> {
    /// Write the final chunk and give back the writer inside.
    pub fn finish(self) -> io::Result<W> {
        self.0.finish()
    }
}

impl<W: Write> Write for Encrypting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identities(text: &str) -> Result<Identities> {
        Identities::parse(&SecretFile::from_text("/k", text))
    }

    #[test]
    fn round_trip_and_tampering() {
        let key = age::x25519::Identity::generate();
        let ids = identities(&format!(
            "# created: now\n{}\n",
            age::secrecy::ExposeSecret::expose_secret(&key.to_string())
        ))
        .unwrap();
        let mut r = Recipients::default();
        r.add(&key.to_public().to_string(), "test").unwrap();
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = r.encrypt(Vec::new()).unwrap();
        w.write_all(&plain).unwrap();
        let cipher = w.finish().unwrap();

        let mut out = Vec::new();
        ids.decrypt(&cipher[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);

        let mut cut = cipher.clone();
        cut.truncate(cipher.len() - 1);
        let mut sink = Vec::new();
        assert!(ids
            .decrypt(&cut[..])
            .unwrap()
            .read_to_end(&mut sink)
            .is_err());

        let mut bad = cipher.clone();
        let last = bad.len() - 10;
        bad[last] ^= 1;
        assert!(ids
            .decrypt(&bad[..])
            .unwrap()
            .read_to_end(&mut sink)
            .is_err());

        let other = age::x25519::Identity::generate();
        let other = identities(age::secrecy::ExposeSecret::expose_secret(
            &other.to_string(),
        ));
        let e = other.unwrap().decrypt(&cipher[..]).err().unwrap();
        assert!(
            e.to_string()
                .contains("not encrypted to any identity in /k"),
            "{e}"
        );
    }

    #[test]
    fn bad_identity_files_name_the_line_not_the_key() {
        let e = identities("# c\nAGE-SECRET-KEY-1NOPE\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/k: line 2: not an age identity (AGE-SECRET-KEY-1…)");
        assert!(identities("# only a comment\n").is_err());
        let key = age::x25519::Identity::generate();
        let text = age::secrecy::ExposeSecret::expose_secret(&key.to_string()).to_string();
        let shown = format!("{:?}", identities(&text).unwrap());
        assert_eq!(shown, "Identities(/k, 1 keys)");
    }
}
