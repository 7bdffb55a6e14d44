//! The `/opt` archive: fetching, verifying and unpacking it, and `olboot pack`.

pub mod pack;
