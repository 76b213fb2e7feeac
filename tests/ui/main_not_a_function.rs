#[taskflow::main]
mod app {
    pub fn run() -> u32 {
        1
    }
}

// The module is emitted as written beside the one error.
fn main() {
    assert_eq!(app::run(), 1);
}
