//! Reading the config from where `-c` says it is: a path, `-` (standard input) or an
//! `http(s)://` URL. The config module only parses text; fetching it is done here, over
//! `sys::http`.

use crate::config::{Config, Invalid};
use anyhow::Result;

/// Read and parse the config at `source`.
pub fn config(source: &str) -> Result<Config> {
    let invalid = |msg: String| anyhow::Error::new(Invalid(msg));
    let text = if source == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| invalid(format!("-: cannot read standard input: {e}")))?;
        s
    } else if source.starts_with("http://") || source.starts_with("https://") {
        crate::sys::http::get_text(source).map_err(|e| invalid(format!("{e:#}")))?
    } else {
        std::fs::read_to_string(source).map_err(|e| invalid(format!("{source}: {e}")))?
    };
    Config::parse(source, &text)
}
