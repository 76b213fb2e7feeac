use std::cell::Cell;

use taskflow::{Resource, task};

#[task]
async fn bump(counter: Resource<Cell<u64>>) -> u64 {
    counter.replace(counter.get() + 1)
}

fn main() {}
