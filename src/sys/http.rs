//! HTTP(S) client settings shared by the config loader and the opt step.

use anyhow::{Context, Result};

/// Fetch a small text document (a config file) from `url`.
pub fn get_text(url: &str) -> Result<String> {
    ureq::get(url)
        .call()
        .with_context(|| format!("{url}: cannot fetch"))?
        .body_mut()
        .read_to_string()
        .with_context(|| format!("{url}: cannot read the body"))
}
