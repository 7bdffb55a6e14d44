//! Reading the config from where `-c` says it is: a path, `-` (standard input) or an
//! `http(s)://` URL. The config module only parses text; fetching it is done here, over
//! `sys::http`.

use crate::config::{Config, Invalid};
use anyhow::Result;
use std::path::Path;

/// Read and parse the config at `source`; a URL gets the credential of `auth_file`.
pub fn config(source: &str, auth_file: Option<&Path>) -> Result<Config> {
    let invalid = |msg: String| anyhow::Error::new(Invalid(msg));
    let text = if source == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| invalid(format!("-: cannot read standard input: {e}")))?;
        s
    } else if source.starts_with("http://") || source.starts_with("https://") {
        let auth = auth_file.map(crate::store::auth_file).transpose()?;
        let text = crate::sys::http::get_text(source, auth.as_ref())
            .map_err(|e| invalid(format!("{e:#}")))?;
        // The URL names the config in every message: without its query and user-info.
        return Config::parse(&crate::secret::ShownUrl::new(source).to_string(), &text);
    } else {
        std::fs::read_to_string(source).map_err(|e| invalid(format!("{source}: {e}")))?
    };
    Config::parse(source, &text)
}
