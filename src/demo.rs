//! `switchyard demo`: wiring for the embedded demonstration (filled in below).

use std::time::Duration;

pub fn run(_duration: Duration) -> Result<(), String> {
    Err("demo not wired yet".into())
}
