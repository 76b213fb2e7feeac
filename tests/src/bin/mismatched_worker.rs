//! A worker program from "another build", for `tests/tests/handshake.rs`.
//!
//! It declares that test's tasks under the same names and executors, except
//! that `handshake::square` takes and returns `u32` where the test's takes and
//! returns `u64`. Bytes the test encodes for `square` would decode here as
//! another value, or not at all; the handshake must refuse this program
//! before any is sent.

use std::process::ExitCode;

use taskflow::task;

#[task(executor = "process", name = "handshake::greet")]
fn greet(name: String) -> String {
    format!("hello from the mismatched worker, {name}")
}

#[task(executor = "process", name = "handshake::square")]
fn square(n: u32) -> u32 {
    n.wrapping_mul(n)
}

fn main() -> ExitCode {
    // A worker serves here and exits; it never returns from `init`.
    taskflow::init();
    eprintln!("mismatched_worker only serves as a worker program for tests/tests/handshake.rs");
    ExitCode::FAILURE
}
