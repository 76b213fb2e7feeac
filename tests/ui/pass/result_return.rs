//! A `Result` return, by any path ending in `Result`, makes `Err` fail the
//! attempt; the handle carries the `Ok` type.
use std::io;
use std::path::PathBuf;

use taskflow::task;

#[task]
fn size(path: PathBuf) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

#[task]
fn size_again(path: PathBuf) -> std::io::Result<u64> {
    size(path)
}

#[task]
async fn parse(text: String) -> Result<u32, std::num::ParseIntError> {
    text.parse()
}

/// A bare alias named `Result`, with no arguments to read the output from.
mod alias {
    pub type Result = std::result::Result<u32, String>;

    #[taskflow::task]
    pub fn answer() -> Result {
        Ok(42)
    }
}

fn main() {
    let _: fn() -> taskflow::TaskCall<u32> = alias::answer::call;
    let _: fn(PathBuf) -> taskflow::TaskCall<u64> = size::call;
    let _: fn(PathBuf) -> taskflow::TaskCall<u64> = size_again::call;
    let _: fn(String) -> taskflow::TaskCall<u32> = parse::call;
    assert!(size(PathBuf::from("/definitely/not/here")).is_err());
}
