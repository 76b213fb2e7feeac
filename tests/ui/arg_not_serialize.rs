use taskflow::task;

struct Point {
    x: i32,
    y: i32,
}

#[task]
fn norm(point: Point, scale: i32) -> i32 {
    (point.x.abs() + point.y.abs()) * scale
}

// The companion is still emitted, and its call sites add no error of their own.
#[allow(dead_code)]
fn call_sites() {
    let _ = norm::enqueue(Point { x: 1, y: 2 }, 3);
    let _ = norm::call(Point { x: 1, y: 2 }, 3).tag("shape", "point");
}

fn main() {}
