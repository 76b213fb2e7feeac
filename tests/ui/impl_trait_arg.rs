use taskflow::task;

#[task]
fn greet(name: impl Into<String>) -> String {
    format!("hello, {}", name.into())
}

fn main() {}
