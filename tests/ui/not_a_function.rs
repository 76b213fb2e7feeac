use taskflow::task;

#[task]
#[derive(Debug, Clone, Copy)]
struct Point {
    x: u32,
}

// The item is emitted as written beside the one error, so its uses (and its
// derives) raise nothing more.
fn main() {
    let point = Point { x: 1 };
    let copy = point;
    println!("{copy:?} {}", point.x + 1);
}
